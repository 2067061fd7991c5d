use proc_macro::TokenStream;
#[proc_macro_attribute]
pub fn pg_cached(_a: TokenStream, i: TokenStream) -> TokenStream { i }
