//! The caller's trainer state (`trainer_state.user`) to JSON and back, keeping non-finite floats.
//!
//! JSON has no NaN or infinity, and serde_json writes them as `null`, so a `best_loss: f64` of
//! `inf` would come back as an error. Here a non-finite float is written as the string `"NaN"`,
//! `"Infinity"` or `"-Infinity"` (protobuf's JSON mapping, which Python's `float()` parses), and
//! read back into any float field; untyped readers see the string. Pure: no I/O. It must not
//! change anything else serde_json does (map keys, integers, enums are serde_json's own).

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize, Serializer};
use serde_json::{Map, Value};

/// The caller's state as the record's JSON value: serde_json's value, except that non-finite
/// floats become `"NaN"`, `"Infinity"` or `"-Infinity"`.
///
/// ```
/// let v = waypoint::format::user_state_to_value(&f64::INFINITY).unwrap();
/// assert_eq!(v, "Infinity");
/// let back: f64 = waypoint::format::user_state_from_value(v).unwrap();
/// assert_eq!(back, f64::INFINITY);
/// ```
pub fn user_state_to_value<S: Serialize + ?Sized>(state: &S) -> serde_json::Result<Value> {
    Finite(state).serialize(serde_json::value::Serializer)
}

/// Reads the caller's state back from the record's JSON value: serde_json's reading, except that
/// a float field also accepts `"NaN"`, `"Infinity"` and `"-Infinity"`.
pub fn user_state_from_value<T: de::DeserializeOwned>(value: Value) -> serde_json::Result<T> {
    T::deserialize(Lenient(value))
}

fn non_finite_name(v: f64) -> &'static str {
    if v.is_nan() {
        "NaN"
    } else if v > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }
}

fn non_finite_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// A value serialised through [`Enc`].
struct Finite<'a, T: ?Sized>(&'a T);

impl<T: Serialize + ?Sized> Serialize for Finite<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(Enc(s))
    }
}

/// A serializer that hands everything to the inner one, non-finite floats as strings.
struct Enc<S>(S);

macro_rules! forward {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(fn $method(self, $($arg: $ty),*) -> Result<Self::Ok, Self::Error> {
            self.0.$method($($arg),*)
        })*
    };
}

impl<S: Serializer> Serializer for Enc<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Enc<S::SerializeSeq>;
    type SerializeTuple = Enc<S::SerializeTuple>;
    type SerializeTupleStruct = Enc<S::SerializeTupleStruct>;
    type SerializeTupleVariant = Enc<S::SerializeTupleVariant>;
    type SerializeMap = Enc<S::SerializeMap>;
    type SerializeStruct = Enc<S::SerializeStruct>;
    type SerializeStructVariant = Enc<S::SerializeStructVariant>;

    forward! {
        serialize_bool(v: bool);
        serialize_i8(v: i8);
        serialize_i16(v: i16);
        serialize_i32(v: i32);
        serialize_i64(v: i64);
        serialize_i128(v: i128);
        serialize_u8(v: u8);
        serialize_u16(v: u16);
        serialize_u32(v: u32);
        serialize_u64(v: u64);
        serialize_u128(v: u128);
        serialize_char(v: char);
        serialize_str(v: &str);
        serialize_bytes(v: &[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(name: &'static str);
        serialize_unit_variant(name: &'static str, index: u32, variant: &'static str);
    }

    fn serialize_f32(self, v: f32) -> Result<S::Ok, S::Error> {
        match v.is_finite() {
            true => self.0.serialize_f32(v),
            false => self.0.serialize_str(non_finite_name(v.into())),
        }
    }

    fn serialize_f64(self, v: f64) -> Result<S::Ok, S::Error> {
        match v.is_finite() {
            true => self.0.serialize_f64(v),
            false => self.0.serialize_str(non_finite_name(v)),
        }
    }

    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<S::Ok, S::Error> {
        self.0.serialize_some(&Finite(v))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        v: &T,
    ) -> Result<S::Ok, S::Error> {
        self.0.serialize_newtype_struct(name, &Finite(v))
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<S::Ok, S::Error> {
        self.0
            .serialize_newtype_variant(name, index, variant, &Finite(v))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        self.0.serialize_seq(len).map(Enc)
    }

    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        self.0.serialize_tuple(len).map(Enc)
    }

    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        self.0.serialize_tuple_struct(name, len).map(Enc)
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        self.0
            .serialize_tuple_variant(name, index, variant, len)
            .map(Enc)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        self.0.serialize_map(len).map(Enc)
    }

    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        self.0.serialize_struct(name, len).map(Enc)
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        self.0
            .serialize_struct_variant(name, index, variant, len)
            .map(Enc)
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! compound {
    ($trait:ident, $method:ident) => {
        impl<S: ser::$trait> ser::$trait for Enc<S> {
            type Ok = S::Ok;
            type Error = S::Error;
            fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), S::Error> {
                self.0.$method(&Finite(v))
            }
            fn end(self) -> Result<S::Ok, S::Error> {
                self.0.end()
            }
        }
    };
}

compound!(SerializeSeq, serialize_element);
compound!(SerializeTuple, serialize_element);
compound!(SerializeTupleStruct, serialize_field);
compound!(SerializeTupleVariant, serialize_field);

impl<S: ser::SerializeMap> ser::SerializeMap for Enc<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), S::Error> {
        self.0.serialize_key(&Finite(key))
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), S::Error> {
        self.0.serialize_value(&Finite(v))
    }
    fn end(self) -> Result<S::Ok, S::Error> {
        self.0.end()
    }
}

macro_rules! fields {
    ($trait:ident) => {
        impl<S: ser::$trait> ser::$trait for Enc<S> {
            type Ok = S::Ok;
            type Error = S::Error;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                v: &T,
            ) -> Result<(), S::Error> {
                self.0.serialize_field(key, &Finite(v))
            }
            fn skip_field(&mut self, key: &'static str) -> Result<(), S::Error> {
                self.0.skip_field(key)
            }
            fn end(self) -> Result<S::Ok, S::Error> {
                self.0.end()
            }
        }
    };
}

fields!(SerializeStruct);
fields!(SerializeStructVariant);

/// A JSON value read as serde_json reads one, except that float fields accept the three names.
struct Lenient(Value);

type DeResult<T> = Result<T, serde_json::Error>;

impl<'de> de::Deserializer<'de> for Lenient {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> DeResult<V::Value> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => visitor.visit_string(s),
            Value::Array(items) => {
                let len = items.len();
                let mut seq = Seq(items.into_iter());
                let out = visitor.visit_seq(&mut seq)?;
                match seq.0.len() {
                    0 => Ok(out),
                    _ => Err(de::Error::invalid_length(len, &"fewer elements in array")),
                }
            }
            Value::Object(map) => visitor.visit_map(Entries::new(map)),
        }
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> DeResult<V::Value> {
        match &self.0 {
            Value::String(s) => match non_finite_value(s) {
                Some(v) => visitor.visit_f64(v),
                None => self.deserialize_any(visitor),
            },
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> DeResult<V::Value> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> DeResult<V::Value> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(Lenient(other)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> DeResult<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> DeResult<V::Value> {
        match self.0 {
            Value::String(variant) => visitor.visit_enum(variant.into_deserializer()),
            Value::Object(map) if map.len() == 1 => {
                let Some((variant, value)) = map.into_iter().next() else {
                    return Err(de::Error::custom("an enum is a map with one key"));
                };
                visitor.visit_enum(Variant { variant, value })
            }
            other => Err(de::Error::invalid_type(unexpected(&other), &"an enum")),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 char str string bytes byte_buf unit
        unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

fn unexpected(value: &Value) -> de::Unexpected<'_> {
    match value {
        Value::Null => de::Unexpected::Unit,
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::Number(_) => de::Unexpected::Other("number"),
        Value::String(s) => de::Unexpected::Str(s),
        Value::Array(_) => de::Unexpected::Seq,
        Value::Object(_) => de::Unexpected::Map,
    }
}

struct Seq(std::vec::IntoIter<Value>);

impl<'de> de::SeqAccess<'de> for Seq {
    type Error = serde_json::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> DeResult<Option<T::Value>> {
        self.0
            .next()
            .map(|v| seed.deserialize(Lenient(v)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Entries {
    iter: serde_json::map::IntoIter,
    value: Option<Value>,
}

impl Entries {
    fn new(map: Map<String, Value>) -> Self {
        Entries {
            iter: map.into_iter(),
            value: None,
        }
    }
}

impl<'de> de::MapAccess<'de> for Entries {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> DeResult<Option<K::Value>> {
        let Some((key, value)) = self.iter.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        seed.deserialize(Key(key)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> DeResult<V::Value> {
        match self.value.take() {
            Some(v) => seed.deserialize(Lenient(v)),
            None => Err(de::Error::custom(
                "a map value was asked for before its key",
            )),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// A map key: a string, parsed when an integer, a bool or a float is asked for (as serde_json
/// reads keys).
struct Key(String);

macro_rules! parse_key {
    ($($method:ident => $visit:ident: $ty:ty),*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> DeResult<V::Value> {
            match self.0.parse::<$ty>() {
                Ok(v) => visitor.$visit(v),
                Err(_) => visitor.visit_string(self.0),
            }
        })*
    };
}

impl<'de> de::Deserializer<'de> for Key {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> DeResult<V::Value> {
        visitor.visit_string(self.0)
    }

    parse_key! {
        deserialize_bool => visit_bool: bool,
        deserialize_i8 => visit_i8: i8,
        deserialize_i16 => visit_i16: i16,
        deserialize_i32 => visit_i32: i32,
        deserialize_i64 => visit_i64: i64,
        deserialize_i128 => visit_i128: i128,
        deserialize_u8 => visit_u8: u8,
        deserialize_u16 => visit_u16: u16,
        deserialize_u32 => visit_u32: u32,
        deserialize_u64 => visit_u64: u64,
        deserialize_u128 => visit_u128: u128,
        deserialize_f32 => visit_f32: f32,
        deserialize_f64 => visit_f64: f64
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> DeResult<V::Value> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> DeResult<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> DeResult<V::Value> {
        visitor.visit_enum(self.0.into_deserializer())
    }

    serde::forward_to_deserialize_any! {
        char str string bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
}

struct Variant {
    variant: String,
    value: Value,
}

impl<'de> de::EnumAccess<'de> for Variant {
    type Error = serde_json::Error;
    type Variant = Lenient;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> DeResult<(V::Value, Lenient)> {
        let variant = seed.deserialize(self.variant.into_deserializer())?;
        Ok((variant, Lenient(self.value)))
    }
}

impl<'de> de::VariantAccess<'de> for Lenient {
    type Error = serde_json::Error;

    fn unit_variant(self) -> DeResult<()> {
        match self.0 {
            Value::Null => Ok(()),
            other => Err(de::Error::invalid_type(unexpected(&other), &"unit variant")),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> DeResult<T::Value> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> DeResult<V::Value> {
        de::Deserializer::deserialize_any(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> DeResult<V::Value> {
        de::Deserializer::deserialize_any(self, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Phase {
        Warmup,
        Decay { from: f64 },
        Scaled(f32),
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct State {
        best_loss: f64,
        worst: f32,
        nan: f64,
        history: Vec<f64>,
        by_step: BTreeMap<u64, f64>,
        maybe: Option<f64>,
        none: Option<f64>,
        phases: Vec<Phase>,
        name: String,
        pair: (u8, f64),
        big: u64,
        neg: i64,
    }

    fn sample() -> State {
        State {
            best_loss: f64::INFINITY,
            worst: f32::NEG_INFINITY,
            nan: f64::NAN,
            history: vec![1.5, f64::INFINITY, -0.0],
            by_step: [(10, f64::NEG_INFINITY), (20, 0.25)].into(),
            maybe: Some(f64::INFINITY),
            none: None,
            phases: vec![
                Phase::Warmup,
                Phase::Decay {
                    from: f64::INFINITY,
                },
                Phase::Scaled(2.5),
            ],
            name: "Infinity".into(),
            pair: (7, f64::NEG_INFINITY),
            big: u64::MAX,
            neg: i64::MIN,
        }
    }

    #[test]
    fn non_finite_floats_round_trip_through_a_struct() {
        let value = user_state_to_value(&sample()).unwrap();
        assert_eq!(value["best_loss"], "Infinity");
        assert_eq!(value["worst"], "-Infinity");
        assert_eq!(value["nan"], "NaN");
        assert_eq!(value["by_step"]["10"], "-Infinity");
        assert_eq!(value["phases"][1]["Decay"]["from"], "Infinity");
        let back: State = user_state_from_value(value).unwrap();
        assert!(back.nan.is_nan());
        let want = sample();
        assert_eq!(
            (back.best_loss, back.worst, &back.history, &back.by_step),
            (want.best_loss, want.worst, &want.history, &want.by_step)
        );
        assert_eq!(
            (back.maybe, back.none, &back.phases, &back.name, back.pair),
            (want.maybe, want.none, &want.phases, &want.name, want.pair)
        );
        assert_eq!((back.big, back.neg), (u64::MAX, i64::MIN));
    }

    /// Everything finite is exactly what serde_json writes and reads.
    #[test]
    fn finite_states_are_serde_json_s() {
        let v = serde_json::json!({"a": [1, -2, 0.5, null, true, "x"], "b": {"c": 18446744073709551615u64}});
        assert_eq!(user_state_to_value(&v).unwrap(), v);
        assert_eq!(user_state_from_value::<Value>(v.clone()).unwrap(), v);
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Finite {
            x: f64,
            n: u32,
            s: String,
        }
        let f = Finite {
            x: 0.1,
            n: 3,
            s: "NaN".into(),
        };
        let value = user_state_to_value(&f).unwrap();
        assert_eq!(value, serde_json::to_value(&f).unwrap());
        assert_eq!(user_state_from_value::<Finite>(value).unwrap(), f);
    }

    #[test]
    fn wrong_types_are_still_errors() {
        let err = user_state_from_value::<f64>(Value::String("inf".into())).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
        assert!(user_state_from_value::<u32>(serde_json::json!(-1)).is_err());
        assert!(user_state_from_value::<(u8,)>(serde_json::json!([1, 2])).is_err());
        assert!(user_state_from_value::<BTreeMap<u64, u8>>(serde_json::json!({"x": 1})).is_err());
    }
}
