//! Entries no one else can forge or read: the envelopes an entry is wrapped in
//! when the cache has keys (`CACHE_SIGNING_KEY`, `CACHE_ENCRYPTION_KEY`).
//!
//! ```text
//! signed  0xA5 0x81 | the entry within (plain, or sealed)                        | HMAC-SHA256, 32 bytes
//! sealed  0xA5 0x82 | nonce, 24 random bytes | XChaCha20-Poly1305 of the plain entry | tag, 16 bytes
//! ```
//!
//! The signature covers a domain label, the full entry key (its length, then
//! its bytes) and every stored byte before it; the sealed entry's associated data
//! is the full entry key. So an entry copied under another key — another user's —
//! fails like a forged one. With both keys an entry is sealed, then signed.
//!
//! Writers use the current key; readers try the current key, then the previous
//! one (rotation). A cache with a signing key takes only signed entries, one with
//! an encryption key only sealed ones: anything else is [`Unverified`], which the
//! codec counts as a miss. A cache without keys reads and writes plain entries,
//! byte for byte as before, and counts the envelopes as entries of an unknown format.

use std::borrow::Cow;
use std::fmt;

use chacha20poly1305::aead::Generate as _;
use chacha20poly1305::{AeadInOut, KeyInit, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

/// The entries' magic byte (see [`entry`](crate::entry)).
const MAGIC: u8 = 0xA5;
/// Byte 1 of a signed entry.
const SIGNED: u8 = 0x81;
/// Byte 1 of a sealed entry.
const SEALED: u8 = 0x82;
const HEADER: usize = 2;
const MAC_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// What the signature covers first, so that no other use of the key signs alike.
const DOMAIN: &[u8] = b"aside entry v1\0";

/// The shortest key accepted, in bytes.
pub(crate) const MIN_KEY_BYTES: usize = 32;

/// Key material, given as hex. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SecretKey(Vec<u8>);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// Parses hex digits into a key of at least [`MIN_KEY_BYTES`] bytes, of
    /// exactly `exact` bytes when given.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming `var` and what is wrong, never the text itself.
    pub(crate) fn parse(var: &'static str, text: &str, exact: Option<usize>) -> Result<SecretKey> {
        let wanted = match exact {
            Some(n) => format!("exactly {} hex digits ({n} bytes)", 2 * n),
            None => format!("at least {} hex digits ({MIN_KEY_BYTES} bytes)", 2 * MIN_KEY_BYTES),
        };
        let bad = |problem: String| Error::Config {
            var,
            problem: format!("{problem}: write {wanted}, e.g. from `openssl rand -hex 32`"),
        };
        let text = text.trim().as_bytes();
        if text.len() % 2 != 0 {
            return Err(bad(format!("the key has an odd number of characters ({})", text.len())));
        }
        let bytes = text
            .chunks(2)
            .map(|pair| Some(hex_digit(pair[0])? << 4 | hex_digit(pair[1])?))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| bad("the key is not hex".to_owned()))?;
        let fits = match exact {
            Some(n) => bytes.len() == n,
            None => bytes.len() >= MIN_KEY_BYTES,
        };
        if !fits {
            return Err(bad(format!("the key is {} bytes", bytes.len())));
        }
        Ok(SecretKey(bytes))
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The keys of one cache, each with the one it replaces (during a rotation).
#[derive(Clone, Default)]
pub(crate) struct Keys {
    pub(crate) signing: Option<SecretKey>,
    pub(crate) signing_previous: Option<SecretKey>,
    pub(crate) encryption: Option<SecretKey>,
    pub(crate) encryption_previous: Option<SecretKey>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |key: &Option<SecretKey>| if key.is_some() { "<redacted>" } else { "none" };
        f.debug_struct("Keys")
            .field("signing", &shown(&self.signing))
            .field("signing_previous", &shown(&self.signing_previous))
            .field("encryption", &shown(&self.encryption))
            .field("encryption_previous", &shown(&self.encryption_previous))
            .finish()
    }
}

/// What the four keys are called where they were given (environment or builder).
pub(crate) struct KeyNames {
    pub(crate) signing: &'static str,
    pub(crate) signing_previous: &'static str,
    pub(crate) encryption: &'static str,
    pub(crate) encryption_previous: &'static str,
}

impl Keys {
    /// The XChaCha20-Poly1305 key length: encryption keys are exactly this long.
    pub(crate) const ENCRYPTION_KEY_BYTES: usize = 32;

    /// Checks the keys together: a previous key needs a current one, and one
    /// key never serves both purposes.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the offending key.
    pub(crate) fn check(&self, names: &KeyNames) -> Result<()> {
        let pairs = [
            (
                &self.signing,
                &self.signing_previous,
                names.signing,
                names.signing_previous,
            ),
            (
                &self.encryption,
                &self.encryption_previous,
                names.encryption,
                names.encryption_previous,
            ),
        ];
        for (current, previous, current_name, previous_name) in pairs {
            if current.is_none() && previous.is_some() {
                return Err(Error::Config {
                    var: previous_name,
                    problem: format!("a previous key needs a current one: set {current_name} too"),
                });
            }
        }
        let signing = [&self.signing, &self.signing_previous];
        let encryption = [&self.encryption, &self.encryption_previous];
        if signing
            .iter()
            .flat_map(|s| s.iter())
            .any(|s| encryption.iter().flat_map(|e| e.iter()).any(|e| e == s))
        {
            return Err(Error::Config {
                var: names.encryption,
                problem: format!("the same key is also a signing key ({}): use two keys", names.signing),
            });
        }
        Ok(())
    }
}

/// Why the bytes at a key were refused: a miss, counted in `unverified`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unverified {
    #[error("the entry is not signed, and this cache has a signing key")]
    Unsigned,
    #[error("the entry's signature does not verify under the current or previous signing key (forged, tampered with, or copied from another key)")]
    Forged,
    #[error("the entry is not sealed, and this cache has an encryption key")]
    Unsealed,
    #[error("the entry does not open under the current or previous encryption key (forged, tampered with, or copied from another key)")]
    Unopened,
}

/// The signing and sealing of one cache: keyed once, current key first.
pub(crate) struct Seal {
    signers: Vec<Hmac<Sha256>>,
    sealers: Vec<XChaCha20Poly1305>,
}

impl fmt::Debug for Seal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Seal")
            .field("signing_keys", &self.signers.len())
            .field("encryption_keys", &self.sealers.len())
            .finish()
    }
}

impl Seal {
    /// Keys the MAC and the cipher once, from checked [`Keys`].
    pub(crate) fn new(keys: &Keys) -> Seal {
        let signers = [&keys.signing, &keys.signing_previous]
            .into_iter()
            .flatten()
            // HMAC takes a key of any length.
            .filter_map(|key| Hmac::<Sha256>::new_from_slice(&key.0).ok())
            .collect();
        let sealers = [&keys.encryption, &keys.encryption_previous]
            .into_iter()
            .flatten()
            // Parsed at exactly the cipher's key length.
            .filter_map(|key| XChaCha20Poly1305::new_from_slice(&key.0).ok())
            .collect();
        Seal { signers, sealers }
    }

    /// Wraps a plain entry for the store at the full key `key`: sealed, then
    /// signed, as the keys say; unchanged without keys.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] when no random nonce could be drawn, or the cipher refuses.
    pub(crate) fn wrap(&self, key: &str, entry: Vec<u8>) -> Result<Vec<u8>> {
        let entry = match self.sealers.first() {
            Some(sealer) => seal(sealer, key, &entry)?,
            None => entry,
        };
        Ok(match self.signers.first() {
            Some(signer) => sign(signer, key, &entry),
            None => entry,
        })
    }

    /// The plain entry within `bytes` stored at the full key `key`, once its
    /// signature and seal verify; `bytes` themselves without keys.
    pub(crate) fn open<'b>(&self, key: &str, bytes: &'b [u8]) -> std::result::Result<Cow<'b, [u8]>, Unverified> {
        let inner = if self.signers.is_empty() {
            bytes
        } else {
            self.verify(key, bytes)?
        };
        if self.sealers.is_empty() {
            return Ok(Cow::Borrowed(inner));
        }
        self.unseal(key, inner).map(Cow::Owned)
    }

    /// The bytes a signed entry carries, if a signing key signed them for `key`.
    fn verify<'b>(&self, key: &str, bytes: &'b [u8]) -> std::result::Result<&'b [u8], Unverified> {
        if bytes.len() < HEADER + MAC_LEN || bytes[..HEADER] != [MAGIC, SIGNED] {
            return Err(Unverified::Unsigned);
        }
        let (signed, mac) = bytes.split_at(bytes.len() - MAC_LEN);
        if self
            .signers
            .iter()
            .any(|signer| mac_of(signer, key, signed).verify_slice(mac).is_ok())
        {
            Ok(&signed[HEADER..])
        } else {
            Err(Unverified::Forged)
        }
    }

    /// The plain entry a sealed one holds, if an encryption key sealed it for `key`.
    fn unseal(&self, key: &str, bytes: &[u8]) -> std::result::Result<Vec<u8>, Unverified> {
        if bytes.len() < HEADER + NONCE_LEN + TAG_LEN || bytes[..HEADER] != [MAGIC, SEALED] {
            return Err(Unverified::Unsealed);
        }
        let (nonce, rest) = bytes[HEADER..].split_at(NONCE_LEN);
        let (sealed, tag) = rest.split_at(rest.len() - TAG_LEN);
        let (Ok(nonce), Ok(tag)) = (XNonce::try_from(nonce), TagOf::try_from(tag)) else {
            return Err(Unverified::Unsealed);
        };
        for sealer in &self.sealers {
            let mut plain = sealed.to_vec();
            if sealer
                .decrypt_inout_detached(&nonce, key.as_bytes(), plain.as_mut_slice().into(), &tag)
                .is_ok()
            {
                return Ok(plain);
            }
        }
        Err(Unverified::Unopened)
    }
}

type TagOf = chacha20poly1305::aead::Tag<XChaCha20Poly1305>;

/// `[MAGIC, SEALED]`, a fresh random nonce, `entry` encrypted under it, its tag.
fn seal(sealer: &XChaCha20Poly1305, key: &str, entry: &[u8]) -> Result<Vec<u8>> {
    let failed = |what: &str| Error::Encode(format!("cannot seal the entry: {what}").into());
    let nonce = XNonce::try_generate().map_err(|_| failed("no random nonce from the system"))?;
    let mut out = Vec::with_capacity(HEADER + NONCE_LEN + entry.len() + TAG_LEN);
    out.extend_from_slice(&[MAGIC, SEALED]);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(entry);
    let tag = sealer
        .encrypt_inout_detached(&nonce, key.as_bytes(), (&mut out[HEADER + NONCE_LEN..]).into())
        .map_err(|_| failed("the cipher refused it"))?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// `[MAGIC, SIGNED]`, `entry`, and the signature of both for `key`.
fn sign(signer: &Hmac<Sha256>, key: &str, entry: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + entry.len() + MAC_LEN);
    out.extend_from_slice(&[MAGIC, SIGNED]);
    out.extend_from_slice(entry);
    let mac = mac_of(signer, key, &out).finalize().into_bytes();
    out.extend_from_slice(&mac);
    out
}

/// The MAC of `signed` stored at `key`, not yet finished.
fn mac_of(signer: &Hmac<Sha256>, key: &str, signed: &[u8]) -> Hmac<Sha256> {
    let mut mac = signer.clone();
    mac.update(DOMAIN);
    mac.update(&(key.len() as u64).to_be_bytes());
    mac.update(key.as_bytes());
    mac.update(signed);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = "0101010101010101010101010101010101010101010101010101010101010101";
    const TWO: &str = "0202020202020202020202020202020202020202020202020202020202020202";
    const THREE: &str = "0303030303030303030303030303030303030303030303030303030303030303";

    fn key(hex: &str) -> Option<SecretKey> {
        Some(SecretKey::parse("K", hex, None).unwrap())
    }

    fn signing(current: &str, previous: Option<&str>) -> Seal {
        Seal::new(&Keys {
            signing: key(current),
            signing_previous: previous.and_then(key),
            ..Keys::default()
        })
    }

    fn sealing(current: &str, previous: Option<&str>) -> Seal {
        Seal::new(&Keys {
            encryption: key(current),
            encryption_previous: previous.and_then(key),
            ..Keys::default()
        })
    }

    const ENTRY: &[u8] = b"\xA5\x01\0\0\0\0\0\0\0\x01{\"total\":1234}";

    #[test]
    fn without_keys_entries_pass_unchanged() {
        let seal = Seal::new(&Keys::default());
        assert_eq!(seal.wrap("k", ENTRY.to_vec()).unwrap(), ENTRY);
        assert!(matches!(seal.open("k", ENTRY), Ok(Cow::Borrowed(b)) if b == ENTRY));
    }

    #[test]
    fn signed_entries_verify_for_their_key_only() {
        let seal = signing(ONE, None);
        let signed = seal.wrap("aside:user:1", ENTRY.to_vec()).unwrap();
        assert_eq!(signed.len(), ENTRY.len() + HEADER + MAC_LEN);
        assert_eq!(&*seal.open("aside:user:1", &signed).unwrap(), ENTRY);
        assert!(matches!(seal.open("aside:user:2", &signed), Err(Unverified::Forged)));
        assert!(matches!(seal.open("aside:user:1", ENTRY), Err(Unverified::Unsigned)));
        for i in 0..signed.len() {
            let mut tampered = signed.clone();
            tampered[i] ^= 1;
            assert!(seal.open("aside:user:1", &tampered).is_err(), "byte {i}");
        }
        assert!(matches!(
            signing(TWO, None).open("aside:user:1", &signed),
            Err(Unverified::Forged)
        ));
    }

    #[test]
    fn sealed_entries_hide_the_value_and_open_for_their_key_only() {
        let seal = sealing(ONE, None);
        let sealed = seal.wrap("aside:user:1", ENTRY.to_vec()).unwrap();
        assert!(!sealed.windows(5).any(|w| w == b"total"));
        assert_ne!(
            sealed,
            seal.wrap("aside:user:1", ENTRY.to_vec()).unwrap(),
            "a nonce per entry"
        );
        assert_eq!(&*seal.open("aside:user:1", &sealed).unwrap(), ENTRY);
        assert!(matches!(seal.open("aside:user:2", &sealed), Err(Unverified::Unopened)));
        assert!(matches!(seal.open("aside:user:1", ENTRY), Err(Unverified::Unsealed)));
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(matches!(
            seal.open("aside:user:1", &tampered),
            Err(Unverified::Unopened)
        ));
    }

    #[test]
    fn both_keys_seal_then_sign() {
        let seal = Seal::new(&Keys {
            signing: key(ONE),
            encryption: key(TWO),
            ..Keys::default()
        });
        let wrapped = seal.wrap("k", ENTRY.to_vec()).unwrap();
        assert_eq!(wrapped[..HEADER], [MAGIC, SIGNED]);
        assert_eq!(wrapped[HEADER..2 * HEADER], [MAGIC, SEALED]);
        assert_eq!(&*seal.open("k", &wrapped).unwrap(), ENTRY);
        // Signed but not sealed: refused by a cache that seals.
        let signed_only = signing(ONE, None).wrap("k", ENTRY.to_vec()).unwrap();
        assert!(matches!(seal.open("k", &signed_only), Err(Unverified::Unsealed)));
    }

    #[test]
    fn the_previous_key_reads_and_the_current_one_writes() {
        let old_signed = signing(ONE, None).wrap("k", ENTRY.to_vec()).unwrap();
        let old_sealed = sealing(ONE, None).wrap("k", ENTRY.to_vec()).unwrap();
        let rotated_signing = signing(TWO, Some(ONE));
        let rotated_sealing = sealing(TWO, Some(ONE));
        assert_eq!(&*rotated_signing.open("k", &old_signed).unwrap(), ENTRY);
        assert_eq!(&*rotated_sealing.open("k", &old_sealed).unwrap(), ENTRY);
        let new_signed = rotated_signing.wrap("k", ENTRY.to_vec()).unwrap();
        let new_sealed = rotated_sealing.wrap("k", ENTRY.to_vec()).unwrap();
        assert!(signing(ONE, None).open("k", &new_signed).is_err());
        assert!(sealing(ONE, None).open("k", &new_sealed).is_err());
        assert!(signing(TWO, None).open("k", &new_signed).is_ok());
        assert!(sealing(TWO, None).open("k", &new_sealed).is_ok());
        // A key neither current nor previous.
        assert!(signing(THREE, Some(TWO)).open("k", &old_signed).is_err());
    }

    #[test]
    fn keys_are_hex_of_enough_bytes_and_never_shown() {
        assert!(SecretKey::parse("K", &ONE.to_uppercase(), None).is_ok());
        assert!(SecretKey::parse("K", &format!("{ONE}{TWO}"), None).is_ok());
        assert!(SecretKey::parse("K", &format!("{ONE}{TWO}"), Some(32)).is_err());
        let secret = "s3cr3t-but-not-hex-s3cr3t-but-not-hex-s3cr3t-but-not-hex-s3cr3t!";
        for (text, why) in [(&ONE[..62], "32 hex"), (&ONE[..63], "odd"), (secret, "not hex")] {
            let err = SecretKey::parse("CACHE_SIGNING_KEY", text, None).unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(shown.contains("CACHE_SIGNING_KEY"), "{shown}");
            assert!(shown.contains(why) || shown.contains("31 bytes"), "{shown}");
            assert!(!shown.contains(text), "{shown}");
        }
        let keys = Keys {
            signing: key(ONE),
            ..Keys::default()
        };
        assert!(!format!("{keys:?} {:?}", Seal::new(&keys)).contains("0101"));
    }

    #[test]
    fn keys_are_checked_together() {
        let names = KeyNames {
            signing: "S",
            signing_previous: "SP",
            encryption: "E",
            encryption_previous: "EP",
        };
        let only_previous = Keys {
            signing_previous: key(ONE),
            ..Keys::default()
        };
        assert!(matches!(
            only_previous.check(&names),
            Err(Error::Config { var: "SP", .. })
        ));
        let shared = Keys {
            signing: key(ONE),
            encryption: key(ONE),
            ..Keys::default()
        };
        assert!(matches!(shared.check(&names), Err(Error::Config { var: "E", .. })));
        let fine = Keys {
            signing: key(ONE),
            signing_previous: key(TWO),
            encryption: key(THREE),
            ..Keys::default()
        };
        assert!(fine.check(&names).is_ok());
    }
}
