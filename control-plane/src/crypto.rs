//! Envelope encryption of provider secrets (BYOK and platform keys).
//!
//! Every secret gets its own random 256-bit data key; the secret is sealed with
//! XChaCha20-Poly1305 under that data key, and the data key is sealed (wrapped) under the
//! master key given to the control plane at start. Both seals carry associated data naming
//! the row — scope, owner, provider and key id — so a ciphertext moved onto another row
//! (another owner, another provider, another id) fails authentication instead of decrypting.
//!
//! Rotating the master key rewraps the data keys only; secrets are never re-encrypted and
//! never leave this module in plaintext except through [`Secret::expose`].
//!
//! Stored form (hex text, so it is the same on SQLite and PostgreSQL):
//! `ciphertext = hex(nonce[24] ‖ AEAD(data key, secret))`,
//! `wrapped_key = hex(nonce[24] ‖ AEAD(master key, data key))`, and the master key's id
//! (a fingerprint, [`MasterKey::id`]) beside them.

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use opsgate_core::credentials::hex;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Overwrites `bytes` with zeros in a way the optimiser keeps.
fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: `b` is a valid, aligned, exclusive reference to a byte.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// A plaintext secret. Its `Debug` never shows it; it is wiped when dropped.
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
    /// The plaintext, for the one place that needs it (the upstream credential).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        wipe(&mut bytes);
    }
}

/// The master key: 32 bytes, known by its id (a fingerprint) and never printed.
pub struct MasterKey {
    key: [u8; KEY_LEN],
    id: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        wipe(&mut self.key);
    }
}

impl MasterKey {
    pub fn from_bytes(key: [u8; KEY_LEN]) -> MasterKey {
        // The id identifies the key without revealing it: a domain-separated SHA-256.
        let mut h = Sha256::new();
        h.update(b"opsgate master key id v1\0");
        h.update(key);
        let id = format!("mk_{}", &hex(&h.finalize())[..16]);
        MasterKey { key, id }
    }

    pub fn generate() -> MasterKey {
        MasterKey::from_bytes(random())
    }

    /// Parses a master key written as 64 hex characters or as base64 (standard or URL-safe,
    /// padded or not) of exactly 32 bytes. Errors never repeat the input.
    pub fn parse(text: &str) -> Result<MasterKey, String> {
        let t = text.trim();
        let bytes = if t.len() == 2 * KEY_LEN && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..KEY_LEN)
                .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| "the master key is not valid hex".to_string())?
        } else {
            use base64::engine::general_purpose::{
                STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
            };
            [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
                .iter()
                .find_map(|e| e.decode(t).ok())
                .ok_or_else(|| {
                    "the master key must be 32 bytes written as 64 hex characters or base64"
                        .to_string()
                })?
        };
        let mut key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "the master key must be exactly 32 bytes (it decodes to {})",
                bytes.len()
            )
        })?;
        let mk = MasterKey::from_bytes(key);
        wipe(&mut key);
        Ok(mk)
    }

    /// Reads a master key file: the text forms of [`MasterKey::parse`], or 32 raw bytes.
    /// Warns when the file can be read by other users.
    pub fn from_file(path: &std::path::Path) -> Result<MasterKey, String> {
        let mut raw = std::fs::read(path)
            .map_err(|e| format!("cannot read the master key file {}: {e}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        "the master key file is readable by other users; chmod 600 it"
                    );
                }
            }
        }
        let result = match std::str::from_utf8(&raw) {
            Ok(text) if !text.trim().is_empty() && raw.len() != KEY_LEN => MasterKey::parse(text),
            _ => match <[u8; KEY_LEN]>::try_from(raw.as_slice()) {
                Ok(mut key) => {
                    let mk = MasterKey::from_bytes(key);
                    wipe(&mut key);
                    Ok(mk)
                }
                Err(_) => MasterKey::parse(&String::from_utf8_lossy(&raw)),
            },
        };
        wipe(&mut raw);
        result.map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes a new key file (64 hex characters), created with mode 0600; never overwrites.
    pub fn write_new_file(&self, path: &std::path::Path) -> Result<(), String> {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let mut text = format!("{}\n", hex(&self.key)).into_bytes();
        let r = f
            .write_all(&text)
            .and_then(|_| f.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", path.display()));
        wipe(&mut text);
        r
    }

    /// The fingerprint stored beside every data key this master key wraps.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(&self.key))
    }
}

/// The master keys a process holds: the current one (new secrets, rewraps) and, during a
/// rotation, previous ones that can still open what they wrapped.
#[derive(Debug)]
pub struct Keyring {
    current: MasterKey,
    previous: Vec<MasterKey>,
}

impl Keyring {
    pub fn new(current: MasterKey) -> Keyring {
        Keyring {
            current,
            previous: Vec::new(),
        }
    }

    /// Adds a key that may open existing secrets but never seals new ones.
    pub fn with_previous(mut self, key: MasterKey) -> Keyring {
        if key.id != self.current.id && !self.previous.iter().any(|k| k.id == key.id) {
            self.previous.push(key);
        }
        self
    }

    pub fn current(&self) -> &MasterKey {
        &self.current
    }

    pub fn get(&self, id: &str) -> Option<&MasterKey> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
    }

    pub fn ids(&self) -> Vec<&str> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|k| k.id.as_str())
            .collect()
    }
}

/// The row a ciphertext belongs to. All four fields are bound as associated data.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// `user` or `platform`.
    pub scope: &'a str,
    /// The user id, or `platform`.
    pub owner: &'a str,
    pub provider: &'a str,
    pub key_id: &'a str,
}

impl Binding<'_> {
    /// Length-prefixed fields under a domain and a purpose, so no two bindings (and no
    /// secret/data-key pair) share associated data.
    fn aad(&self, purpose: &str) -> Vec<u8> {
        let mut v = b"opsgate provider secret v1".to_vec();
        for field in [purpose, self.scope, self.owner, self.provider, self.key_id] {
            v.extend_from_slice(&(field.len() as u32).to_be_bytes());
            v.extend_from_slice(field.as_bytes());
        }
        v
    }
}

/// A sealed secret as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub ciphertext: String,
    pub wrapped_key: String,
    pub master_key_id: String,
}

/// Why a sealed secret could not be opened. None of them carries secret material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// The data key is wrapped under a master key this process does not hold.
    UnknownMasterKey(String),
    /// Authentication failed: the row was tampered with, moved onto another owner,
    /// provider or id, or its master-key id lies.
    Integrity,
    /// The stored text is not what this module writes.
    Malformed,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::UnknownMasterKey(id) => write!(
                f,
                "wrapped under master key {id}, which this process does not hold"
            ),
            OpenError::Integrity => f.write_str(
                "integrity check failed (tampered with, or copied from another owner/provider/id)",
            ),
            OpenError::Malformed => f.write_str("stored ciphertext is malformed"),
        }
    }
}

fn unhex(s: &str) -> Result<Vec<u8>, OpenError> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(OpenError::Malformed);
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| OpenError::Malformed))
        .collect()
}

fn seal_with(cipher: &XChaCha20Poly1305, msg: &[u8], aad: &[u8]) -> Result<String, String> {
    let nonce: [u8; NONCE_LEN] = random();
    let ct = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg, aad })
        .map_err(|_| "encryption failed".to_string())?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    Ok(hex(&out))
}

fn open_with(cipher: &XChaCha20Poly1305, stored: &str, aad: &[u8]) -> Result<Vec<u8>, OpenError> {
    let raw = unhex(stored)?;
    if raw.len() < NONCE_LEN + TAG_LEN {
        return Err(OpenError::Malformed);
    }
    let (nonce, ct) = raw.split_at(NONCE_LEN);
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| OpenError::Integrity)
}

/// Seals `secret` for the row `binding` under the keyring's current master key.
pub fn seal(keyring: &Keyring, binding: &Binding<'_>, secret: &str) -> Result<Sealed, String> {
    let mut data_key: [u8; KEY_LEN] = random();
    let dk = XChaCha20Poly1305::new(Key::from_slice(&data_key));
    let ciphertext = seal_with(&dk, secret.as_bytes(), &binding.aad("secret"));
    let master = keyring.current();
    let wrapped = seal_with(&master.cipher(), &data_key, &binding.aad("data key"));
    wipe(&mut data_key);
    Ok(Sealed {
        ciphertext: ciphertext?,
        wrapped_key: wrapped?,
        master_key_id: master.id.clone(),
    })
}

fn unwrap_data_key(
    master: &MasterKey,
    binding: &Binding<'_>,
    wrapped_key: &str,
) -> Result<[u8; KEY_LEN], OpenError> {
    let mut raw = open_with(&master.cipher(), wrapped_key, &binding.aad("data key"))?;
    let key = <[u8; KEY_LEN]>::try_from(raw.as_slice()).map_err(|_| OpenError::Malformed);
    wipe(&mut raw);
    key
}

/// Opens a sealed secret stored for the row `binding`.
pub fn open(
    keyring: &Keyring,
    binding: &Binding<'_>,
    sealed: &Sealed,
) -> Result<Secret, OpenError> {
    let master = keyring
        .get(&sealed.master_key_id)
        .ok_or_else(|| OpenError::UnknownMasterKey(sealed.master_key_id.clone()))?;
    let mut data_key = unwrap_data_key(master, binding, &sealed.wrapped_key)?;
    let dk = XChaCha20Poly1305::new(Key::from_slice(&data_key));
    wipe(&mut data_key);
    let mut plain = open_with(&dk, &sealed.ciphertext, &binding.aad("secret"))?;
    let text = String::from_utf8(std::mem::take(&mut plain)).map_err(|e| {
        let mut b = e.into_bytes();
        wipe(&mut b);
        OpenError::Malformed
    })?;
    Ok(Secret(text))
}

/// Rewraps a data key from `old` to `new` master key (the secret's ciphertext is unchanged).
pub fn rewrap(
    old: &MasterKey,
    new: &MasterKey,
    binding: &Binding<'_>,
    wrapped_key: &str,
) -> Result<String, OpenError> {
    let mut data_key = unwrap_data_key(old, binding, wrapped_key)?;
    let r = seal_with(&new.cipher(), &data_key, &binding.aad("data key"));
    wipe(&mut data_key);
    r.map_err(|_| OpenError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding<'a>(owner: &'a str, provider: &'a str, id: &'a str) -> Binding<'a> {
        Binding {
            scope: "user",
            owner,
            provider,
            key_id: id,
        }
    }

    #[test]
    fn round_trip_and_binding() {
        let ring = Keyring::new(MasterKey::generate());
        let b = binding("alice", "openrouter", "byok_1");
        let s = seal(&ring, &b, "sk-or-v1-secret-value-123").unwrap();
        assert!(!s.ciphertext.contains("secret"));
        assert_eq!(s.master_key_id, ring.current().id());
        assert_eq!(
            open(&ring, &b, &s).unwrap().expose(),
            "sk-or-v1-secret-value-123"
        );
        for other in [
            binding("mallory", "openrouter", "byok_1"),
            binding("alice", "openai", "byok_1"),
            binding("alice", "openrouter", "byok_2"),
            Binding {
                scope: "platform",
                ..b
            },
        ] {
            assert_eq!(open(&ring, &other, &s).unwrap_err(), OpenError::Integrity);
        }
        // Each secret has its own data key and nonces: sealing twice differs.
        let s2 = seal(&ring, &b, "sk-or-v1-secret-value-123").unwrap();
        assert_ne!(s.ciphertext, s2.ciphertext);
        assert_ne!(s.wrapped_key, s2.wrapped_key);
        // A swapped wrapped key does not open the other ciphertext.
        let mixed = Sealed {
            wrapped_key: s2.wrapped_key.clone(),
            ..s.clone()
        };
        assert_eq!(open(&ring, &b, &mixed).unwrap_err(), OpenError::Integrity);
        let bad = Sealed {
            ciphertext: "zz".into(),
            ..s.clone()
        };
        assert_eq!(open(&ring, &b, &bad).unwrap_err(), OpenError::Malformed);
    }

    #[test]
    fn rotation_rewraps_only_the_data_key() {
        let old = MasterKey::generate();
        let old_id = old.id().to_string();
        let ring = Keyring::new(old);
        let b = binding("alice", "openai", "byok_9");
        let s = seal(&ring, &b, "sk-abcdefghijklmnop").unwrap();
        let new = MasterKey::generate();
        let wrapped = rewrap(ring.current(), &new, &b, &s.wrapped_key).unwrap();
        let rotated = Sealed {
            wrapped_key: wrapped,
            master_key_id: new.id().to_string(),
            ciphertext: s.ciphertext.clone(),
        };
        let new_ring = Keyring::new(new);
        assert_eq!(
            open(&new_ring, &b, &rotated).unwrap().expose(),
            "sk-abcdefghijklmnop"
        );
        assert_eq!(
            open(&new_ring, &b, &s).unwrap_err(),
            OpenError::UnknownMasterKey(old_id)
        );
        // The old key cannot open the rewrapped row, even when the id is forged.
        let forged = Sealed {
            master_key_id: ring.current().id().to_string(),
            ..rotated
        };
        assert_eq!(open(&ring, &b, &forged).unwrap_err(), OpenError::Integrity);
    }

    #[test]
    fn master_key_forms() {
        let hex64 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let a = MasterKey::parse(hex64).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(a.key);
        let b = MasterKey::parse(&format!("  {b64}\n")).unwrap();
        assert_eq!(a.id(), b.id());
        assert!(a.id().starts_with("mk_") && a.id().len() == 19);
        assert!(!format!("{a:?}").contains("0011"));
        let e = MasterKey::parse("c2hvcnQ=").unwrap_err();
        assert!(e.contains("32 bytes"), "{e}");
        let e = MasterKey::parse("not a key at all!").unwrap_err();
        assert!(!e.contains("not a key"), "{e}");
        assert_ne!(MasterKey::generate().id(), MasterKey::generate().id());
        assert_eq!(
            format!("{:?}", Secret::new("x".into())),
            "Secret(<redacted>)"
        );
    }
}
