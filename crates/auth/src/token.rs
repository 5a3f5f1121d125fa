//! Bearer tokens: how they are made, and the only form in which a policy holds them (their
//! SHA-256).
//!
//! A token is 32 random bytes from the operating system, written as `rkv_` and 64 hex digits.
//! With that much entropy a plain SHA-256 is the right hash (a slow password hash protects
//! guessable secrets; these are not guessable), and it costs ~1 µs per request. Looking a
//! hash up in a map is not constant-time, which reveals at most something about the *hash*
//! of a token, not the token.

use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;

/// The bytes of randomness in a token.
const TOKEN_RANDOM_BYTES: usize = 32;
/// The longest token accepted from a request: a hash of a megabyte header per request would
/// be a cheap way to burn a node's CPU.
pub const TOKEN_BYTES_MAX: usize = 512;

/// A token as a caller presents it. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(s: impl Into<String>) -> Token {
        Token(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// A new token: `rkv_` and 64 hex digits of the system's randomness.
pub fn generate_token() -> Result<Token, ring::error::Unspecified> {
    let mut bytes = [0u8; TOKEN_RANDOM_BYTES];
    SystemRandom::new().fill(&mut bytes)?;
    Ok(Token(format!("rkv_{}", hex(&bytes))))
}

/// The SHA-256 of a token, as 64 lowercase hex digits: what a policy's `sha256` holds.
pub fn hash_token(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_and_hash_to_sha256() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 4 + 64);
        assert_eq!(format!("{a:?}"), "Token(..)");
        // The SHA-256 test vector of "abc".
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
