//! HMAC-SHA1 for str0m (SRTP's AES_CM_128_HMAC_SHA1_80 tag on every packet, STUN's
//! integrity), on OpenSSL's plain SHA-1. str0m's openssl backend makes an HMAC key and a
//! signer per call (`PKey::hmac`, `Signer::new`: OpenSSL 3 looks the algorithm up by name each
//! time); measured in the load generator's light viewers (30 viewers), that lookup was their
//! largest cost after the kernel's, and this took a viewer from ~20 to ~8 µs of CPU per packet
//! (with batched reads). The engine and the light viewers both install it; the rest of the
//! openssl backend (DTLS, AES) is kept.

use openssl::sha::Sha1;
use str0m::crypto::Sha1HmacProvider;

#[derive(Debug)]
struct PlainSha1Hmac;

impl Sha1HmacProvider for PlainSha1Hmac {
    fn sha1_hmac(&self, key: &[u8], payloads: &[&[u8]]) -> [u8; 20] {
        hmac_sha1(key, payloads)
    }
}

/// RFC 2104 over SHA-1 (64-byte blocks).
pub fn hmac_sha1(key: &[u8], payloads: &[&[u8]]) -> [u8; 20] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        let mut h = Sha1::new();
        h.update(key);
        block[..20].copy_from_slice(&h.finish());
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let (mut ipad, mut opad) = ([0x36u8; 64], [0x5cu8; 64]);
    for i in 0..64 {
        ipad[i] ^= block[i];
        opad[i] ^= block[i];
    }
    let mut inner = Sha1::new();
    inner.update(&ipad);
    for p in payloads {
        inner.update(p);
    }
    let mut outer = Sha1::new();
    outer.update(&opad);
    outer.update(&inner.finish());
    outer.finish()
}

/// str0m's openssl provider with this HMAC, as the process default (before any `Rtc`).
pub fn install() {
    static HMAC: PlainSha1Hmac = PlainSha1Hmac;
    let mut p = str0m::crypto::from_feature_flags();
    p.sha1_hmac_provider = &HMAC;
    p.install_process_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_2202_vectors() {
        let hex = |b: [u8; 20]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        // test case 2 (a short key), split over two payloads as SRTP passes it
        assert_eq!(
            hex(hmac_sha1(b"Jefe", &[b"what do ya want ", b"for nothing?"])),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        // test case 6 (a key longer than a block)
        assert_eq!(
            hex(hmac_sha1(
                &[0xaa; 80],
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            )),
            "aa4ae5e15272d00e95705637ce8a3b55ed402112"
        );
    }
}
