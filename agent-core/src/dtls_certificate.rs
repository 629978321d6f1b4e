//! The one DTLS certificate of an agent process: ECDSA P-256, made once, handed to every
//! webrtcbin our signaller serves (producer-agent's webrtcsink, consumer-agent's webrtcsrc, both
//! sides of the pipeline relay).
//!
//! Why: GStreamer 1.22's DTLS makes an RSA key by itself, and peers that offer ECDSA suites
//! only (aiortc, measured: "no shared cipher" in dtlsdec) cannot connect to an RSA certificate.
//! An ECDSA certificate still works with RSA peers: each side signs with its own key, the
//! cipher suite (ECDHE_ECDSA here) only has to match ours.
//!
//! How: webrtcbin 1.22 has no certificate property; each `GstWebRTCDTLSTransport` makes a
//! `dtlssrtpdec` (with the `dtlssrtpenc` of the same connection id) and its `pem` property picks
//! the certificate. webrtcsink and webrtcsrc emit `webrtcbin-ready` on their signaller before
//! any transport exists, so the signaller (see [`crate::signaller::ClusterSignaller::new`])
//! watches each webrtcbin's `deep-element-added` and sets `pem` on each new `dtlssrtpdec`
//! while it is still in NULL: setting it makes the decoder's connection again with our
//! certificate, before the encoder takes that connection when going to READY.
//!
//! One 1.22 flaw to undo: webrtcbin computes its SDP `a=fingerprint` from that same property,
//! which for a given certificate returns the whole string, key included, and hashes every
//! base64 line of it: SHA-256(certificate DER ‖ key DER), not the certificate's fingerprint.
//! GStreamer peers do not check it; browsers and aiortc do ("fingerprint mismatch"). So the
//! signaller passes each SDP it sends through [`correct_fingerprints`], which replaces exactly
//! that wrong value with the right one (a transport that kept GStreamer's own certificate has
//! a different, correct value and is left alone).
//!
//! Made with `rcgen` (pure Rust over `ring`, both already in the build for the tests and
//! rustls): a P-256 key and a self-signed certificate take well under a millisecond, where
//! GStreamer's RSA-2048 key took 160 ms here.

use std::sync::OnceLock;

use gst::glib;
use gst::prelude::*;

/// Why no certificate could be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot make the DTLS certificate: {0}")]
pub struct CertificateError(#[from] rcgen::Error);

/// The process's certificate, with the two SDP fingerprints that name it.
pub struct DtlsCertificate {
    /// The certificate then its private key, PEM: what `dtlssrtpdec`'s `pem` property reads
    /// (OpenSSL's PEM_read_bio_X509, then PEM_read_bio_PrivateKey).
    pub pem: String,
    /// `sha-256 AB:CD:…` of the certificate's DER: what peers check.
    pub fingerprint: String,
    /// What webrtcbin 1.22 writes instead (see the module's doc).
    webrtcbin_fingerprint: String,
}

/// The process's one certificate, made on first use.
pub fn get() -> Result<&'static DtlsCertificate, &'static CertificateError> {
    static CERTIFICATE: OnceLock<Result<DtlsCertificate, CertificateError>> = OnceLock::new();
    CERTIFICATE.get_or_init(make).as_ref()
}

fn make() -> Result<DtlsCertificate, CertificateError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "gst-webrtc-cluster");
    let cert = params.self_signed(&key)?;
    let key_der = key.serialize_der();
    let both = [cert.der().as_ref(), key_der.as_slice()].concat();
    Ok(DtlsCertificate {
        pem: format!("{}{}", cert.pem(), key.serialize_pem()),
        fingerprint: sha256_fingerprint(cert.der()),
        webrtcbin_fingerprint: sha256_fingerprint(&both),
    })
}

/// `sha-256 AB:CD:…`, as SDP writes it (RFC 8122), with webrtcbin's upper-case hex.
fn sha256_fingerprint(der: &[u8]) -> String {
    let digest = glib::compute_checksum_for_data(glib::ChecksumType::Sha256, der)
        .map(|d| d.to_ascii_uppercase())
        .unwrap_or_default();
    let pairs: Vec<&str> = (0..digest.len() / 2)
        .filter_map(|i| digest.get(2 * i..2 * i + 2))
        .collect();
    format!("sha-256 {}", pairs.join(":"))
}

/// `sdp` with webrtcbin's wrong fingerprint of our certificate replaced by the right one; any
/// other fingerprint (a transport that kept GStreamer's certificate) is kept.
pub fn correct_fingerprints(sdp: &str) -> std::borrow::Cow<'_, str> {
    let Ok(cert) = get() else {
        return sdp.into();
    };
    let wrong = format!("a=fingerprint:{}", cert.webrtcbin_fingerprint);
    if !sdp.contains(&wrong) {
        return sdp.into();
    }
    sdp.replace(&wrong, &format!("a=fingerprint:{}", cert.fingerprint))
        .into()
}

/// Gives our certificate to every DTLS transport `webrtcbin` makes from now on. Called from
/// the signaller's `webrtcbin-ready`, which webrtcsink and webrtcsrc emit before negotiating.
pub fn use_in(webrtcbin: &gst::Element) {
    let pem = match get() {
        Ok(cert) => cert.pem.as_str(),
        Err(e) => {
            // Not fatal: GStreamer's own RSA certificate still serves RSA-capable peers.
            tracing::warn!("{e}: keeping GStreamer's RSA certificate");
            return;
        }
    };
    let bin = match webrtcbin.downcast_ref::<gst::Bin>() {
        Some(bin) => bin,
        None => return,
    };
    bin.connect_deep_element_added(move |_, _, element| give(element, pem));
    // Transports made before the signal: none with gst-plugins-rs 0.15 (webrtcsink emits it in
    // READY before the offer, webrtcsrc before the remote offer), but cheap to cover.
    let existing = bin.iterate_all_by_element_factory_name("dtlssrtpdec");
    for element in existing.into_iter().flatten() {
        give(&element, pem);
    }
}

fn give(element: &gst::Element, pem: &str) {
    let is_decoder = element
        .factory()
        .is_some_and(|f| f.name().as_str() == "dtlssrtpdec");
    if !is_decoder {
        return;
    }
    if element.current_state() != gst::State::Null {
        // Its encoder may already hold the old connection: changing it now would split them.
        tracing::warn!(
            element = %element.name(),
            "DTLS decoder already started: keeping GStreamer's RSA certificate for it"
        );
        return;
    }
    element.set_property("pem", pem);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_is_ecdsa_p256_with_its_key() {
        let pem = &get().expect("certificate").pem;
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let key_at = pem
            .find("-----BEGIN PRIVATE KEY-----")
            .expect("key after the cert");
        let key = rcgen::KeyPair::from_pem(&pem[key_at..]).expect("the key parses");
        assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    }

    #[test]
    fn made_once_per_process() {
        assert!(std::ptr::eq(get().unwrap(), get().unwrap()));
    }

    #[test]
    fn a_fingerprint_is_32_upper_case_hex_pairs() {
        let f = sha256_fingerprint(b"abc");
        // SHA-256("abc"), FIPS 180-2's example.
        assert_eq!(
            f,
            "sha-256 BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }

    /// A real webrtcbin (no peer): its offer's fingerprint is the one predicted for our
    /// certificate, and once corrected names the certificate itself.
    #[test]
    fn a_webrtcbin_offers_our_certificate() {
        gst::init().expect("GStreamer");
        let cert = get().unwrap();
        let pipeline = gst::Pipeline::new();
        let webrtcbin = gst::ElementFactory::make("webrtcbin").build().unwrap();
        use_in(&webrtcbin);
        pipeline.add(&webrtcbin).unwrap();
        pipeline.set_state(gst::State::Ready).unwrap();
        let caps = "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000";
        let caps = caps.parse::<gst::Caps>().unwrap();
        let direction = gst_webrtc::WebRTCRTPTransceiverDirection::Sendonly;
        webrtcbin.emit_by_name::<gst_webrtc::WebRTCRTPTransceiver>(
            "add-transceiver",
            &[&direction, &caps],
        );
        let promise = gst::Promise::new();
        webrtcbin.emit_by_name::<()>("create-offer", &[&None::<gst::Structure>, &promise]);
        promise.wait();
        let reply = promise.get_reply().expect("an offer");
        let offer = reply
            .get::<gst_webrtc::WebRTCSessionDescription>("offer")
            .unwrap();
        let sdp = offer.sdp().as_text().unwrap();
        pipeline.set_state(gst::State::Null).unwrap();
        let wrong = format!("a=fingerprint:{}", cert.webrtcbin_fingerprint);
        assert!(sdp.contains(&wrong), "{sdp}");
        let right = format!("a=fingerprint:{}", cert.fingerprint);
        assert!(correct_fingerprints(&sdp).contains(&right));
    }

    #[test]
    fn only_webrtcbins_wrong_fingerprint_of_ours_is_replaced() {
        let cert = get().unwrap();
        let other = "a=fingerprint:sha-256 00:11\r\n";
        let sdp = format!(
            "v=0\r\na=fingerprint:{}\r\n{other}",
            cert.webrtcbin_fingerprint
        );
        let fixed = correct_fingerprints(&sdp);
        assert_eq!(
            fixed,
            format!("v=0\r\na=fingerprint:{}\r\n{other}", cert.fingerprint)
        );
        assert_eq!(correct_fingerprints(other), other);
    }
}
