//! Unit tests of the expansion: the output parses, has the expected items, and errors are collected.

use proc_macro2::TokenStream;
use quote::quote;

fn expand(args: TokenStream, item: TokenStream) -> syn::File {
    let tokens = super::expand(args, item).unwrap_or_else(|e| panic!("expansion failed: {e}"));
    syn::parse2(tokens.clone()).unwrap_or_else(|e| panic!("output does not parse: {e}\n{tokens}"))
}

fn errors(args: TokenStream, item: TokenStream) -> Vec<String> {
    match super::expand(args, item) {
        Ok(tokens) => panic!("expected errors, got {tokens}"),
        Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
    }
}

fn functions(file: &syn::File) -> Vec<&syn::ItemFn> {
    file.items
        .iter()
        .map(|item| match item {
            syn::Item::Fn(f) => f,
            other => panic!("unexpected item {}", quote!(#other)),
        })
        .collect()
}

fn text(tokens: impl quote::ToTokens) -> String {
    tokens.to_token_stream().to_string()
}

#[test]
fn free_function_keeps_its_signature_and_gets_companions() {
    let item = quote! {
        /// Docs.
        #[inline]
        pub(crate) async fn retrieve<'a, T: Clone, const N: usize>(query: &'a str, max: usize) -> Result<Vec<T>, E>
        where T: Send
        { body(query) }
    };
    let file = expand(quote!(namespace = "retrieval", ttl = "30m", version = 3), item.clone());
    let fns = functions(&file);
    let original: syn::ItemFn = syn::parse2(item).unwrap();
    assert_eq!(text(&fns[0].sig), text(&original.sig));
    assert_eq!(text(&fns[0].vis), "pub (crate)");
    assert_eq!(fns[0].attrs.len(), 2);
    let body = text(&fns[0].block);
    for expected in [
        "static __PG_CACHED_SITE",
        "Site :: new (\"retrieval\"",
        ", 3u32 ,",
        ". ttl (:: cache_runtime :: __private :: Ttl :: After (:: cache_runtime :: __private :: Duration :: from_secs (1800u64)))",
        "__pg_cached_kb . type_param :: < T > ()",
        "KeyArg :: add_to_key (& N , & mut __pg_cached_kb)",
        "KeyArg :: add_to_key (& query , & mut __pg_cached_kb)",
        "KeyArg :: add_to_key (& max , & mut __pg_cached_kb)",
        ":: cache_runtime :: __private :: CacheRef :: Global",
        "Probe :: < Result < Vec < T > , E > > :: new ()) . policy (false)",
        "let __pg_cached_fake_return : Result < Vec < T > , E > = loop { }",
        "{ body (query) }",
    ] {
        assert!(body.contains(expected), "missing `{expected}` in {body}");
    }
    assert!(!body.contains("self_type"), "{body}");

    let names: Vec<String> = fns.iter().map(|f| f.sig.ident.to_string()).collect();
    assert_eq!(names, ["retrieve", "retrieve_cache_key", "retrieve_invalidate", "retrieve_refresh"]);
    for f in &fns[1..] {
        assert_eq!(text(&f.vis), "pub (crate)");
        assert_eq!(text(&f.sig.generics), text(&original.sig.generics));
        assert_eq!(text(&f.sig.generics.where_clause), "where T : Send");
    }
    assert!(fns[1].sig.asyncness.is_none());
    assert_eq!(text(&fns[1].sig.inputs), "query : & 'a str , max : usize");
    assert!(fns[2].sig.asyncness.is_some());
    assert_eq!(text(&fns[3].sig.inputs), "query : & 'a str , max : usize");
    assert!(text(&fns[3].block).contains("refresh (__pg_cached_key , retrieve :: < T , N > (query , max))"));
}

#[test]
fn methods_key_on_self_type_and_companions_take_ref_self() {
    let file = expand(
        quote!(cache = self.cache, skip(trace_id), cache_none = true),
        quote! { async fn answer(&mut self, q: &str, trace_id: u64) -> Option<String> { None } },
    );
    let fns = functions(&file);
    let body = text(&fns[0].block);
    assert!(body.contains("__pg_cached_kb . self_type :: < Self > ()"), "{body}");
    assert!(body.contains("explicit (& (self . cache))"), "{body}");
    assert!(body.contains("assert_returns_option :: < Option < String > > ()"), "{body}");
    assert!(body.contains(". policy (true)"), "{body}");
    assert!(!body.contains("add_to_key (& trace_id"), "{body}");
    assert_eq!(text(&fns[1].sig.inputs), "& self , q : & str");
    assert_eq!(text(&fns[2].sig.inputs), "& self , q : & str");
    assert_eq!(text(&fns[3].sig.inputs), "& mut self , q : & str , trace_id : u64");
    assert!(text(&fns[3].block).contains("Self :: answer (self , q , trace_id)"));
}

#[test]
fn destructured_arguments() {
    let file = expand(
        quote!(skip(b)),
        quote! { async fn f((a, mut b): (u32, u32), Point { x, .. }: Point, _: u8, _u: u8) -> u32 { 0 } },
    );
    let fns = functions(&file);
    let body = text(&fns[0].block);
    let fed: Vec<&str> = body.match_indices("add_to_key (& ").map(|(i, _)| &body[i + 14..i + 16]).collect();
    assert_eq!(fed, ["a ", "x ", "_u"], "{body}");
    // `_cache_key` keeps the arguments that bind a name in the key, with their patterns.
    assert_eq!(text(&fns[1].sig.inputs), "(a , mut b) : (u32 , u32) , Point { x , .. } : Point , _u : u8");
    // `_refresh` takes everything, renaming patterns, and borrows their names for the key.
    assert_eq!(
        text(&fns[3].sig.inputs),
        "__pg_cached_arg0 : (u32 , u32) , __pg_cached_arg1 : Point , __pg_cached_arg2 : u8 , _u : u8"
    );
    let refresh = text(&fns[3].block);
    assert!(refresh.contains("let (ref a , ref b) = __pg_cached_arg0 ;"), "{refresh}");
    assert!(
        refresh.contains("let Point { x : ref x , .. } = __pg_cached_arg1 ;")
            || refresh.contains("let Point { ref x , .. } = __pg_cached_arg1 ;"),
        "{refresh}"
    );
    assert!(refresh.contains("add_to_key (a , & mut"), "{refresh}");
    assert!(refresh.contains("add_to_key (& _u , & mut"), "{refresh}");
    assert!(refresh.contains("f (__pg_cached_arg0 , __pg_cached_arg1 , __pg_cached_arg2 , _u)"), "{refresh}");
}

#[test]
fn impl_trait_arguments_add_their_type() {
    let file = expand(quote!(), quote! { async fn f(x: impl Display + Serialize) -> String { x.to_string() } });
    let body = text(&functions(&file)[0].block);
    assert!(body.contains("__pg_cached_kb . type_of_val (& x)"), "{body}");
}

#[test]
fn receiverless_function_mentioning_self_keys_on_self() {
    let file = expand(quote!(), quote! { async fn load(id: u32) -> Option<Self> { None } });
    let fns = functions(&file);
    assert!(text(&fns[0].block).contains("self_type :: < Self >"));
    assert!(text(&fns[3].block).contains("Self :: load (id)"));
}

#[test]
fn options_reach_the_site() {
    let file = expand(
        quote!(ttl = "never", single_flight = "cluster", stale = "5m", local = "10s", companions = false),
        quote! { async fn f() -> u8 { 1 } },
    );
    let fns = functions(&file);
    assert_eq!(fns.len(), 1);
    let body = text(&fns[0].block);
    for expected in [
        "Site :: new (\"f\" , :: core :: concat ! (:: core :: module_path ! () , \"::\" , :: core :: stringify ! (f)) , 0u32 ,)",
        ". ttl (:: cache_runtime :: __private :: Ttl :: Never)",
        ". single_flight (:: cache_runtime :: __private :: SingleFlight :: Cluster)",
        ". stale (:: cache_runtime :: __private :: Duration :: from_secs (300u64))",
        ". local (:: cache_runtime :: __private :: Duration :: from_secs (10u64))",
        ":: cache_runtime :: __private :: memoize_local (& __PG_CACHED_SITE",
    ] {
        assert!(body.contains(expected), "missing `{expected}` in {body}");
    }
}

#[test]
fn raw_identifiers() {
    let file = expand(quote!(), quote! { async fn r#type(r#in: u8) -> u8 { r#in } });
    let names: Vec<String> = functions(&file).iter().map(|f| f.sig.ident.to_string()).collect();
    assert_eq!(names, ["r#type", "type_cache_key", "type_invalidate", "type_refresh"]);
}

#[test]
fn every_error_at_once() {
    let messages = errors(
        quote!(ttl = "30 minutes", namespace = "a:b", skip(nope, self), version = 5000000000, bogus = 1, ttl = "1m"),
        quote! { fn f(self, x: u32) -> impl Display { 1 } },
    );
    assert_eq!(
        messages,
        [
            "unknown option `bogus`; expected one of `namespace`, `ttl`, `version`, `skip`, `cache`, `cache_none`, \
             `single_flight`, `stale`, `local`, `companions`, `tags`, `stale_if_error`, `cache_if`, `refresh_ahead`, `background_refresh`, `stream`, `replay`, `similar`, `encrypt` or `tenant`",
            "duplicate option `ttl`",
            "`#[pg_cached]` applies only to `async fn`: a memoized call waits on the database; write `async fn f`",
            "`#[pg_cached]` cannot cache an `impl Trait` return type: a cached value is read back as a concrete \
             type; name the type",
            "`#[pg_cached]` does not support `self` by value: `self` is not part of the cache key, and a method \
             that consumes `self` usually computes its result from it; take `&self`, or pass the data as an \
             argument",
            "no parameter named `nope`; the arguments are `x`",
            "`self` is never part of the cache key; remove it from `skip`",
            "invalid namespace: `:` is not allowed (`:` separates the namespace from the hash in a key); use 1 to \
             64 ASCII letters, digits, `_`, `-` or `.`",
            "`version` must be a `u32`: number too large to fit in target type",
            "a duration has no spaces and uses the units `d`, `h`, `m` and `s`, e.g. \"45s\", \"30m\", \"2h\", \
             \"1d\" or \"1h30m\"",
        ]
    );
}

#[test]
fn misuse() {
    assert_eq!(
        errors(quote!(), quote! { const fn f() -> u8 { 1 } }),
        ["`#[pg_cached]` cannot be applied to a `const fn`: a memoized call reads and writes a database"]
    );
    assert_eq!(errors(quote!(), quote! { struct S; }), ["`#[pg_cached]` applies only to `async fn` items"]);
    assert_eq!(
        errors(quote!(), quote! { async fn f(&self) -> u8; })[0],
        "`#[pg_cached]` needs the function's body: put it on the method in the `impl` block (with \
         `companions = false` in a trait impl), not on the declaration"
    );
    assert_eq!(
        errors(quote!(namespace = ""), quote! { async fn f() {} }),
        ["invalid namespace: it is empty; use 1 to 64 ASCII letters, digits, `_`, `-` or `.`"]
    );
    assert_eq!(
        errors(quote!(single_flight = "global", stale = "never", local = "0s"), quote! { async fn f() {} }),
        [
            "`never` is not allowed here; expected a duration, e.g. \"45s\", \"30m\", \"2h\", \"1d\" or \"1h30m\"",
            "a duration must be longer than zero",
            "expected \"off\", \"process\" or \"cluster\"",
        ]
    );
    assert_eq!(errors(quote!(skip(a, a)), quote! { async fn f(a: u8) {} }), ["`a` is skipped twice"]);
    assert_eq!(
        errors(quote!(version = 2u8), quote! { async fn f() {} }),
        ["`version` is a `u32`; remove the `u8` suffix"]
    );
    assert_eq!(errors(quote!(), quote! { #[pg_cached] async fn f() {} }), ["`#[pg_cached]` is applied more than once"]);
    let long = "x".repeat(65);
    assert_eq!(
        errors(quote!(namespace = #long), quote! { async fn f() {} }),
        ["invalid namespace: it is 65 characters long; use 1 to 64 ASCII letters, digits, `_`, `-` or `.`"]
    );
}

#[test]
fn invalidate_takes_skipped_arguments_the_cache_expression_needs() {
    let file = expand(quote!(skip(db), cache = db), quote! { async fn f(db: &PgCache, x: u32) -> u32 { x } });
    let fns = functions(&file);
    assert_eq!(text(&fns[1].sig.inputs), "x : u32");
    assert_eq!(text(&fns[2].sig.inputs), "db : & PgCache , x : u32");
}

#[test]
fn hash_set_arguments_are_rejected_unless_skipped() {
    let messages = errors(
        quote!(),
        quote! {
            async fn f<'a, T, S>(
                a: HashSet<String>,
                b: &std::collections::HashSet<u32>,
                c: &'a HashSet<T, S>,
                r#in: &mut (hashbrown::HashSet<u8>),
            ) -> u32 { 0 }
        },
    );
    assert_eq!(messages.len(), 4, "{messages:?}");
    for (message, name) in messages.iter().zip(["a", "b", "c", "r#in"]) {
        assert!(message.starts_with("a `HashSet` cannot be part of the cache key: "), "{message}");
        assert!(message.ends_with(&format!("with `skip({name})`")), "{message}");
    }

    // Out of the key, a `HashSet` is fine; so are the ordered set and any map.
    let file = expand(
        quote!(skip(seen)),
        quote! { async fn f(seen: &HashSet<u32>, tags: BTreeSet<u32>, weights: HashMap<u32, u32>) -> u32 { 0 } },
    );
    let body = text(&functions(&file)[0].block);
    assert!(!body.contains("add_to_key (& seen"), "{body}");
    assert!(body.contains("add_to_key (& tags") && body.contains("add_to_key (& weights"), "{body}");
}

#[test]
fn hash_set_errors_come_with_the_others() {
    let messages = errors(quote!(ttl = "soon"), quote! { fn f(s: HashSet<u8>) -> u8 { 0 } });
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert!(messages[0].starts_with("`#[pg_cached]` applies only to `async fn`"));
    assert!(messages[1].starts_with("a `HashSet` cannot be part of the cache key"));
}

/// The namespace and tag rules are cache-rules'; the diagnostics word each way of breaking them.
#[test]
fn rule_diagnostics() {
    let allowed = "use 1 to 64 ASCII letters, digits, `_`, `-` or `.`";
    assert_eq!(
        errors(quote!(), quote! { async fn café() {} }),
        [format!(
            "the function's name is not a valid namespace (`\\u{{e9}}` is not allowed; {allowed}); give one with \
             `namespace = \"...\"`"
        )]
    );
    let long = syn::Ident::new(&"f".repeat(65), proc_macro2::Span::call_site());
    assert_eq!(
        errors(quote!(), quote! { async fn #long() {} }),
        [format!(
            "the function's name is not a valid namespace (it is 65 characters long; {allowed}); give one with \
                  `namespace = \"...\"`"
        )]
    );
    // A forbidden character is named before the length.
    let long_and_bad = format!("{}é", "x".repeat(70));
    assert_eq!(
        errors(quote!(namespace = #long_and_bad), quote! { async fn f() {} }),
        [format!("invalid namespace: `\\u{{e9}}` is not allowed; {allowed}")]
    );
    let long_tag = "é".repeat(201);
    assert_eq!(
        errors(quote!(tags("", "a\u{1f}b", #long_tag, "ok")), quote! { async fn f() {} }),
        [
            "invalid tag: a tag cannot be empty",
            "invalid tag: a tag cannot contain control characters (found `\\u{1f}`)",
            "invalid tag: a tag has at most 200 characters; this one has 201",
        ]
    );
    assert_eq!(
        errors(quote!(ttl = "3650001d", local = "3650001d"), quote! { async fn f() {} }),
        [
            "duration is too long: the maximum is 10,000 years; use \"never\" for entries that do not expire",
            "duration is too long: the maximum is 10,000 years",
        ]
    );
}

#[test]
fn tenant_takes_an_expression_and_is_checked() {
    let item = quote!(
        async fn f(org: &str, q: &str) -> String {
            q.to_owned()
        }
    );
    let file = expand(quote!(tenant = org, skip(org)), item.clone());
    let body = text(&functions(&file)[0].block);
    assert!(body.contains("in_tenant") && body.contains("TenantArg"), "{body}");
    // The key companion takes the argument the expression uses, though it is skipped from the key.
    assert!(text(&functions(&file)[1].sig).contains("org"), "{}", text(&functions(&file)[1].sig));
    let missing = errors(quote!(tenant, namespace = "answer", cache), item.clone());
    assert_eq!(
        missing,
        [
            "`tenant` needs a value: write `tenant = <expression>`",
            "`cache` needs a value: write `cache = <expression>`"
        ]
    );
    let literal = errors(quote!(tenant = "acme"), item);
    assert!(literal[0].contains("not a literal"), "{literal:?}");
}
