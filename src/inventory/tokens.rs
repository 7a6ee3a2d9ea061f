//! Tokens: the admin's and the per-deployment ones. Only BLAKE3 hashes are stored and
//! compared (`blake3::Hash` equality is constant-time); a token is never logged.

/// Hash a token for storage and comparison.
pub fn token_hash(token: &str) -> blake3::Hash {
    blake3::hash(token.as_bytes())
}

/// A new random token (256 bits, hex).
pub fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_long_random_and_hash_stably() {
        let (a, b) = (super::new_token(), super::new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(super::token_hash(&a), super::token_hash(&a.clone()));
        assert_ne!(super::token_hash(&a), super::token_hash(&b));
    }
}
