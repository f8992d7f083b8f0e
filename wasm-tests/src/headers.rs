//! Header maps with Envoy's semantics, and the proxy-wasm pair serialisation.
//!
//! * Names are lower-cased (ASCII) on every insertion and lookup, like
//!   `Http::LowerCaseString`.
//! * Pseudo-headers (`:path`, ...) are kept in front of the regular headers,
//!   in insertion order, like Envoy's `HeaderMapImpl`.
//! * `get` returns the first value of a repeated header (Envoy's
//!   `getHeaderMapValue` returns `entry[0]`).
//! * `set` (`proxy_replace_header_map_value`) overwrites the first entry and
//!   drops the repeats, or appends when the name is absent.
//!
//! The wire format of a map is: `u32` number of pairs, then for each pair
//! `u32` name length and `u32` value length, then for each pair the name bytes,
//! a NUL, the value bytes and a NUL. All integers are little endian.

/// An ordered multi-map of header names (lower case) to values (raw bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderMap {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl HeaderMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a map the way Envoy's `buildHeaderMapFromPairs` does: every pair
    /// is added (repeats kept), names lower-cased.
    pub fn from_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Self {
        let mut map = Self::new();
        for (k, v) in pairs {
            map.add(k.as_ref(), v.as_ref());
        }
        map
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sum of name and value lengths (Envoy's `HeaderMap::byteSize`).
    pub fn byte_size(&self) -> usize {
        self.entries.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    pub fn entries(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.entries
    }

    /// The pairs as strings (lossy for non UTF-8 bytes), for test assertions.
    pub fn to_strings(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        let name = name.to_ascii_lowercase();
        self.entries
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn get_str(&self, name: &str) -> Option<String> {
        self.get(name.as_bytes())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.get(name).is_some()
    }

    /// Appends a value (`addCopy`); repeats are kept.
    pub fn add(&mut self, name: &[u8], value: &[u8]) {
        let name = name.to_ascii_lowercase();
        if name.first() == Some(&b':') {
            let end = self
                .entries
                .iter()
                .position(|(k, _)| k.first() != Some(&b':'))
                .unwrap_or(self.entries.len());
            self.entries.insert(end, (name, value.to_vec()));
        } else {
            self.entries.push((name, value.to_vec()));
        }
    }

    /// Sets a header to exactly one value (`setCopy`).
    pub fn set(&mut self, name: &[u8], value: &[u8]) {
        let name = name.to_ascii_lowercase();
        match self.entries.iter().position(|(k, _)| *k == name) {
            Some(first) => {
                self.entries[first].1 = value.to_vec();
                let mut index = 0;
                self.entries.retain(|(k, _)| {
                    let keep = index <= first || *k != name;
                    index += 1;
                    keep
                });
            }
            None => self.add(&name, value),
        }
    }

    /// Removes every value of a header.
    pub fn remove(&mut self, name: &[u8]) {
        let name = name.to_ascii_lowercase();
        self.entries.retain(|(k, _)| *k != name);
    }

    /// Serialises the map in the proxy-wasm pair format.
    pub fn serialize(&self) -> Vec<u8> {
        serialize_pairs(&self.entries)
    }
}

/// Serialises pairs in the proxy-wasm format (see the module docs).
pub fn serialize_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

/// Parses the proxy-wasm pair format. Like proxy-wasm-cpp-host's
/// `PairsUtil::toPairs`, malformed input yields no pairs at all.
pub fn deserialize_pairs(buf: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    try_deserialize_pairs(buf).unwrap_or_default()
}

fn try_deserialize_pairs(buf: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let read_u32 = |at: usize| -> Option<usize> {
        let bytes: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u32::from_le_bytes(bytes) as usize)
    };
    let count = read_u32(0)?;
    let mut sizes = Vec::with_capacity(count.min(1024));
    let mut pos = 4usize;
    for _ in 0..count {
        sizes.push((read_u32(pos)?, read_u32(pos.checked_add(4)?)?));
        pos = pos.checked_add(8)?;
    }
    let mut pairs = Vec::with_capacity(sizes.len());
    for (key_len, value_len) in sizes {
        let key = buf.get(pos..pos.checked_add(key_len)?)?.to_vec();
        pos = pos.checked_add(key_len)?;
        if buf.get(pos) != Some(&0) {
            return None;
        }
        pos += 1;
        let value = buf.get(pos..pos.checked_add(value_len)?)?.to_vec();
        pos = pos.checked_add(value_len)?;
        if buf.get(pos) != Some(&0) {
            return None;
        }
        pos += 1;
        pairs.push((key, value));
    }
    Some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_headers_stay_in_front_and_names_are_lower_cased() {
        let mut map = HeaderMap::from_pairs(&[("Content-Type", "a"), (":path", "/x")]);
        map.add(b":Method", b"GET");
        let names: Vec<_> = map.to_strings().into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, [":path", ":method", "content-type"]);
        assert_eq!(map.get_str("CONTENT-TYPE").as_deref(), Some("a"));
    }

    #[test]
    fn set_replaces_first_and_drops_repeats() {
        let mut map = HeaderMap::from_pairs(&[("a", "1"), ("b", "2"), ("a", "3")]);
        map.set(b"A", b"9");
        assert_eq!(
            map.to_strings(),
            [("a".into(), "9".into()), ("b".into(), "2".into())]
        );
        map.remove(b"a");
        map.set(b"c", b"4");
        assert_eq!(
            map.to_strings(),
            [("b".into(), "2".into()), ("c".into(), "4".into())]
        );
    }

    #[test]
    fn pairs_round_trip_and_reject_garbage() {
        let map = HeaderMap::from_pairs(&[(":status", "200"), ("x", "")]);
        let bytes = map.serialize();
        assert_eq!(HeaderMap::from_pairs(&deserialize_pairs(&bytes)), map);
        assert!(deserialize_pairs(&bytes[..bytes.len() - 1]).is_empty());
        assert!(deserialize_pairs(&[]).is_empty());
        assert_eq!(serialize_pairs::<&[u8], &[u8]>(&[]), [0, 0, 0, 0]);
    }
}
