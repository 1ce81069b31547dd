//! SCRAM-SHA-256 password verifiers in PostgreSQL's format (`pg_authid.rolpassword`),
//! so passwords reach the server already hashed: a plaintext password never appears in
//! a statement that an error could echo into the server log. Both ends use it: the
//! guest when it provisions at boot, the launcher when it adds an app or rotates a
//! password on a running VM, and then to prove the server holds the new one.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// PostgreSQL's default iteration count.
pub const ITERATIONS: u32 = 4096;

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so new_from_slice cannot fail here.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` for `password` (which the
/// caller has checked is ASCII, where SASLprep is the identity).
pub fn verifier(password: &str, salt: &[u8; 16]) -> String {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, ITERATIONS, &mut salted);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    )
}

/// True when `stored` (a `pg_authid.rolpassword` value) is the verifier of `password`:
/// the same computation with the salt and iteration count `stored` names.
pub fn matches(stored: &str, password: &str) -> bool {
    let Some(rest) = stored.strip_prefix("SCRAM-SHA-256$") else {
        return false;
    };
    let Some((params, _keys)) = rest.split_once('$') else {
        return false;
    };
    let Some((iterations, salt)) = params.split_once(':') else {
        return false;
    };
    if iterations != ITERATIONS.to_string() {
        return false;
    }
    let Ok(salt) = B64.decode(salt) else {
        return false;
    };
    let Ok(salt) = <[u8; 16]>::try_from(salt.as_slice()) else {
        return false;
    };
    verifier(password, &salt) == stored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_reference_computation() {
        let salt: [u8; 16] = core::array::from_fn(|i| u8::try_from(i).unwrap());
        assert_eq!(
            verifier("correct horse battery", &salt),
            "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$DSORcG4dNUxAHTEo5BL20ymSoLgt8C8jLZ09S+VUVlM=:9hLrfnf7zvCtDB9drkVXkMgUsd4vpHfg5YQJDrbaZ30="
        );
    }

    #[test]
    fn a_verifier_matches_its_password_only() {
        let v = verifier("correct horse battery", &[9; 16]);
        assert!(matches(&v, "correct horse battery"));
        assert!(!matches(&v, "correct horse batterz"));
        assert!(!matches("md5abcdef", "correct horse battery"));
        assert!(!matches(
            &v.replacen("4096", "8192", 1),
            "correct horse battery"
        ));
        assert!(!matches(
            "SCRAM-SHA-256$4096:AAEC$x:y",
            "correct horse battery"
        ));
    }
}
