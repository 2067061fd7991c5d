//! A canonical, self-delimiting binary encoding of any `Serialize` value.
//!
//! It serves two jobs with one walk over the value:
//! - **fingerprints** ([`crate::key`]): the encoding is fed to SHA-256. It is stable across processes, builds
//!   and platforms because it depends only on the serde data model, never on `std::hash` or on memory layout.
//!   Map entries are sorted by their encoded key, so a `HashMap`'s iteration order does not matter. Every
//!   string and byte string is length-prefixed and every value is tagged, so `("ab", "c")` and `("a", "bc")`
//!   encode differently.
//! - **JSONB checks** ([`crate::codec`]): the same walk, with a sink that keeps nothing, rejects what
//!   PostgreSQL's `jsonb` cannot hold or serde_json would write lossily (NaN, infinities, -0.0, U+0000).

use serde::ser::{self, Serialize};
use sha2::Digest;
use std::fmt;

/// Where the encoded bytes go.
pub(crate) trait Sink {
    /// Reject values that cannot be stored exactly as JSONB.
    const CHECK_JSONB: bool;
    /// Sort map entries by their encoded key (needed for fingerprints; pointless for checks).
    const SORT_MAPS: bool;
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for sha2::Sha256 {
    const CHECK_JSONB: bool = false;
    const SORT_MAPS: bool = true;
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

impl Sink for Vec<u8> {
    const CHECK_JSONB: bool = false;
    const SORT_MAPS: bool = true;
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Keeps nothing; used to check a value before it is serialized to JSON.
pub(crate) struct JsonbCheck;

impl Sink for JsonbCheck {
    const CHECK_JSONB: bool = true;
    const SORT_MAPS: bool = false;
    fn put(&mut self, _: &[u8]) {}
}

/// Why a value could not be encoded.
#[derive(Debug)]
pub(crate) enum EncodeError {
    /// The value's own `Serialize` implementation failed.
    Custom(String),
    /// A NaN, an infinity or a U+0000, found by a [`JsonbCheck`].
    Unsupported(String),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::Custom(msg) | EncodeError::Unsupported(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for EncodeError {}

impl ser::Error for EncodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        EncodeError::Custom(msg.to_string())
    }
}

// One tag byte starts every value. `END` closes sequences and maps; no value starts with it.
mod tag {
    pub const UNIT: u8 = b'n';
    pub const SOME: u8 = b'S';
    pub const BOOL: u8 = b'b';
    pub const INT: u8 = b'i';
    pub const BIG_UINT: u8 = b'u';
    pub const FLOAT: u8 = b'f';
    pub const STR: u8 = b's';
    pub const BYTES: u8 = b'y';
    pub const UNIT_VARIANT: u8 = b'v';
    pub const NEWTYPE_VARIANT: u8 = b'V';
    pub const SEQ: u8 = b'[';
    pub const TUPLE_VARIANT: u8 = b'T';
    pub const MAP: u8 = b'{';
    pub const STRUCT_VARIANT: u8 = b'R';
    pub const END: u8 = b']';
}

/// Encodes one value into `S`.
pub(crate) struct Encoder<'a, S: Sink> {
    sink: &'a mut S,
}

impl<'a, S: Sink> Encoder<'a, S> {
    pub(crate) fn new(sink: &'a mut S) -> Self {
        Encoder { sink }
    }

    fn tagged(&mut self, tag: u8, payload: &[u8]) {
        self.sink.put(&[tag]);
        self.sink.put(payload);
    }

    fn len_prefixed(&mut self, tag: u8, bytes: &[u8]) {
        self.sink.put(&[tag]);
        self.sink.put(&(bytes.len() as u64).to_le_bytes());
        self.sink.put(bytes);
    }

    fn string(&mut self, s: &str) -> Result<(), EncodeError> {
        if S::CHECK_JSONB && s.contains('\0') {
            return Err(EncodeError::Unsupported(
                "a string contains U+0000, which PostgreSQL text and jsonb cannot store".into(),
            ));
        }
        self.len_prefixed(tag::STR, s.as_bytes());
        Ok(())
    }

    fn int(&mut self, v: i128) {
        self.tagged(tag::INT, &v.to_le_bytes());
    }

    fn float(&mut self, v: f64) -> Result<(), EncodeError> {
        // jsonb stores numbers as `numeric`, which has no negative zero: -0.0 would come back as 0.0.
        if S::CHECK_JSONB && v == 0.0 && v.is_sign_negative() {
            return Err(EncodeError::Unsupported(
                "the float -0.0 would come back from jsonb as 0.0 (numeric has no negative zero)".into(),
            ));
        }
        if !v.is_finite() {
            if S::CHECK_JSONB {
                return Err(EncodeError::Unsupported(format!(
                    "the float {v} has no JSON representation (serde_json would write null and lose it)"
                )));
            }
            // All NaNs are one value for fingerprinting purposes.
            if v.is_nan() {
                self.tagged(tag::FLOAT, &f64::NAN.to_bits().to_le_bytes());
                return Ok(());
            }
        }
        self.tagged(tag::FLOAT, &v.to_bits().to_le_bytes());
        Ok(())
    }
}

/// Encodes a whole value into `sink`.
pub(crate) fn encode<S: Sink, T: Serialize + ?Sized>(sink: &mut S, value: &T) -> Result<(), EncodeError> {
    value.serialize(&mut Encoder::new(sink))
}

/// The `serialize_*` methods of the integer types that widen losslessly to `i128`.
macro_rules! widening_ints {
    ($($method:ident: $ty:ty),* $(,)?) => {$(
        fn $method(self, v: $ty) -> Result<(), EncodeError> {
            self.int(v.into());
            Ok(())
        }
    )*};
}

impl<'a, 'b, S: Sink> ser::Serializer for &'b mut Encoder<'a, S> {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = Compound<'a, 'b, S>;
    type SerializeTuple = Compound<'a, 'b, S>;
    type SerializeTupleStruct = Compound<'a, 'b, S>;
    type SerializeTupleVariant = Compound<'a, 'b, S>;
    type SerializeMap = MapCompound<'a, 'b, S>;
    type SerializeStruct = Compound<'a, 'b, S>;
    type SerializeStructVariant = Compound<'a, 'b, S>;

    fn serialize_bool(self, v: bool) -> Result<(), EncodeError> {
        self.tagged(tag::BOOL, &[u8::from(v)]);
        Ok(())
    }
    // Every integer type that fits an i128 is encoded the same way, so `5u8` and `5i64` make one key.
    widening_ints! {
        serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64, serialize_i128: i128,
        serialize_u8: u8, serialize_u16: u16, serialize_u32: u32, serialize_u64: u64,
    }
    fn serialize_u128(self, v: u128) -> Result<(), EncodeError> {
        match i128::try_from(v) {
            Ok(v) => self.int(v),
            Err(_) => self.tagged(tag::BIG_UINT, &v.to_le_bytes()),
        }
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), EncodeError> {
        // Every f32 is exactly representable as an f64.
        self.float(v.into())
    }
    fn serialize_f64(self, v: f64) -> Result<(), EncodeError> {
        self.float(v)
    }
    fn serialize_char(self, v: char) -> Result<(), EncodeError> {
        self.string(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), EncodeError> {
        self.string(v)
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), EncodeError> {
        self.len_prefixed(tag::BYTES, v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), EncodeError> {
        self.sink.put(&[tag::UNIT]);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), EncodeError> {
        self.sink.put(&[tag::SOME]);
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), EncodeError> {
        self.sink.put(&[tag::UNIT]);
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), EncodeError> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<(), EncodeError> {
        self.len_prefixed(tag::UNIT_VARIANT, variant.as_bytes());
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Result<(), EncodeError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        self.len_prefixed(tag::NEWTYPE_VARIANT, variant.as_bytes());
        value.serialize(self)
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, EncodeError> {
        self.sink.put(&[tag::SEQ]);
        Ok(Compound { enc: self })
    }
    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, EncodeError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Self::SerializeTupleStruct, EncodeError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, EncodeError> {
        self.len_prefixed(tag::TUPLE_VARIANT, variant.as_bytes());
        Ok(Compound { enc: self })
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, EncodeError> {
        self.sink.put(&[tag::MAP]);
        Ok(MapCompound { enc: self, entries: Vec::new(), pending_key: None })
    }
    fn serialize_struct(self, _: &'static str, _len: usize) -> Result<Self::SerializeStruct, EncodeError> {
        // Struct fields come in declaration order, which is already deterministic: no sorting needed.
        self.sink.put(&[tag::MAP]);
        Ok(Compound { enc: self })
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, EncodeError> {
        self.len_prefixed(tag::STRUCT_VARIANT, variant.as_bytes());
        Ok(Compound { enc: self })
    }
}

/// Sequences, tuples and structs: elements in order, then `END`.
pub(crate) struct Compound<'a, 'b, S: Sink> {
    enc: &'b mut Encoder<'a, S>,
}

impl<S: Sink> Compound<'_, '_, S> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        value.serialize(&mut *self.enc)
    }
    fn field<T: Serialize + ?Sized>(&mut self, name: &'static str, value: &T) -> Result<(), EncodeError> {
        self.enc.string(name)?;
        value.serialize(&mut *self.enc)
    }
    fn close(self) -> Result<(), EncodeError> {
        self.enc.sink.put(&[tag::END]);
        Ok(())
    }
}

macro_rules! forward_compound {
    ($($trait:ident :: $method:ident),*) => {$(
        impl<S: Sink> ser::$trait for Compound<'_, '_, S> {
            type Ok = ();
            type Error = EncodeError;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
                self.element(value)
            }
            fn end(self) -> Result<(), EncodeError> {
                self.close()
            }
        }
    )*};
}
macro_rules! forward_compound_fields {
    ($($trait:ident),*) => {$(
        impl<S: Sink> ser::$trait for Compound<'_, '_, S> {
            type Ok = ();
            type Error = EncodeError;
            fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), EncodeError> {
                self.field(key, value)
            }
            fn end(self) -> Result<(), EncodeError> {
                self.close()
            }
        }
    )*};
}
forward_compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

forward_compound_fields!(SerializeStruct, SerializeStructVariant);

/// Maps: when the sink wants sorted maps, each entry is encoded on its own and the entries are written in
/// the order of their encoded keys; otherwise entries go straight to the sink.
pub(crate) struct MapCompound<'a, 'b, S: Sink> {
    enc: &'b mut Encoder<'a, S>,
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    pending_key: Option<Vec<u8>>,
}

fn encode_to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut buf = Vec::new();
    encode(&mut buf, value)?;
    Ok(buf)
}

impl<S: Sink> ser::SerializeMap for MapCompound<'_, '_, S> {
    type Ok = ();
    type Error = EncodeError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), EncodeError> {
        if S::SORT_MAPS {
            self.pending_key = Some(encode_to_vec(key)?);
            Ok(())
        } else {
            key.serialize(&mut *self.enc)
        }
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        if S::SORT_MAPS {
            let key = self
                .pending_key
                .take()
                .ok_or_else(|| EncodeError::Custom("serialize_value called before serialize_key".into()))?;
            self.entries.push((key, encode_to_vec(value)?));
            Ok(())
        } else {
            value.serialize(&mut *self.enc)
        }
    }

    fn end(mut self) -> Result<(), EncodeError> {
        self.entries.sort_unstable();
        for (key, value) in &self.entries {
            self.enc.sink.put(key);
            self.enc.sink.put(value);
        }
        self.enc.sink.put(&[tag::END]);
        Ok(())
    }
}
