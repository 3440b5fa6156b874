//! The hybrid post-quantum key exchange X25519MLKEM768
//! (draft-ietf-tls-ecdhe-mlkem), and the crypto provider every mesh config
//! uses: ring's, with that group offered first.
//!
//! rustls ships the group only on aws-lc-rs, which this workspace keeps out
//! (cmake and a long C build); ring has no ML-KEM. So the ML-KEM-768 half is
//! RustCrypto's pure-Rust `ml-kem`, the X25519 half is rustls's own ring
//! group, and they are combined exactly as rustls's aws-lc-rs `Hybrid` does
//! for this group:
//!
//! - client share: ML-KEM-768 encapsulation key (1184 bytes) || X25519 (32);
//! - server share: ML-KEM-768 ciphertext (1088 bytes) || X25519 (32);
//! - shared secret: ML-KEM shared secret (32) || X25519 shared secret (32).
//!
//! (The post-quantum half comes first for this group only; the P-256 hybrid
//! puts the classical one first.)

use ml_kem::array::Array;
use ml_kem::{Decapsulate, KeyExport, MlKem768, B32};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::crypto::ring::kx_group::X25519;
use rustls::crypto::{
    ActiveKeyExchange, CompletedKeyExchange, CryptoProvider, SharedSecret, SupportedKxGroup,
};
use rustls::ffdhe_groups::FfdheGroup;
use rustls::{Error, NamedGroup, PeerMisbehaved, ProtocolVersion};

type DecapsulationKey = ml_kem::DecapsulationKey<MlKem768>;
type EncapsulationKey = ml_kem::EncapsulationKey<MlKem768>;

const MLKEM768_ENCAPSULATION_KEY_LEN: usize = 1184;
const MLKEM768_CIPHERTEXT_LEN: usize = 1088;
const X25519_LEN: usize = 32;
const CLIENT_SHARE_LEN: usize = MLKEM768_ENCAPSULATION_KEY_LEN + X25519_LEN;
const SERVER_SHARE_LEN: usize = MLKEM768_CIPHERTEXT_LEN + X25519_LEN;

/// Hybrid X25519 + ML-KEM-768 key exchange, NamedGroup 0x11EC.
pub static X25519MLKEM768: &dyn SupportedKxGroup = &X25519MlKem768;

/// ring's provider with X25519MLKEM768 first, then ring's groups (X25519,
/// P-256, P-384) as before.
///
/// A client offers the hybrid group and, in the same ClientHello, a second
/// X25519 share (rustls sends it because X25519 is also in this list), so a
/// server without ML-KEM picks X25519 without a HelloRetryRequest.
pub fn provider() -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups.insert(0, X25519MLKEM768);
    provider
}

/// The key exchange a finished handshake used, named as in the TLS registry,
/// for logs: "X25519MLKEM768" with a weft peer, "X25519" with one that lacks
/// ML-KEM; "none" before the handshake has chosen one.
pub fn key_exchange_group(conn: &rustls::CommonState) -> &'static str {
    match conn.negotiated_key_exchange_group().map(|g| g.name()) {
        None => "none",
        Some(NamedGroup::X25519MLKEM768) => "X25519MLKEM768",
        Some(NamedGroup::X25519) => "X25519",
        Some(NamedGroup::secp256r1) => "secp256r1",
        Some(NamedGroup::secp384r1) => "secp384r1",
        Some(_) => "other",
    }
}

fn invalid_share() -> Error {
    Error::PeerMisbehaved(PeerMisbehaved::InvalidKeyShare)
}

fn random<const N: usize>() -> Result<[u8; N], Error> {
    let mut bytes = [0u8; N];
    SystemRandom::new().fill(&mut bytes).map_err(|_| Error::FailedToGetRandomBytes)?;
    Ok(bytes)
}

#[derive(Debug)]
struct X25519MlKem768;

impl SupportedKxGroup for X25519MlKem768 {
    /// The client's half: a fresh ML-KEM key pair and X25519 key pair.
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let x25519 = X25519.start()?;
        // ML-KEM keys made from a 64-byte seed are valid by construction
        // (FIPS 203's key generation is a function of the seed).
        let mlkem = Box::new(DecapsulationKey::from_seed(Array(random::<64>()?)));
        let mut share = Vec::with_capacity(CLIENT_SHARE_LEN);
        share.extend_from_slice(&mlkem.encapsulation_key().to_bytes());
        share.extend_from_slice(x25519.pub_key());
        Ok(Box::new(Active { x25519, mlkem, share }))
    }

    /// The server's half: encapsulate to the client's ML-KEM key and answer
    /// its X25519 share.
    fn start_and_complete(&self, client_share: &[u8]) -> Result<CompletedKeyExchange, Error> {
        if client_share.len() != CLIENT_SHARE_LEN {
            return Err(invalid_share());
        }
        let (mlkem_share, x25519_share) = client_share.split_at(MLKEM768_ENCAPSULATION_KEY_LEN);
        let key = Array::try_from(mlkem_share).map_err(|_| invalid_share())?;
        // Rejects keys whose coefficients are not reduced (FIPS 203 7.2).
        let key = EncapsulationKey::new(&key).map_err(|_| invalid_share())?;
        let x25519 = X25519.start_and_complete(x25519_share)?;
        // ml-kem's randomised `encapsulate` wants a rand_core 0.10 RNG; the
        // deterministic one with 32 bytes from the system RNG is the same
        // computation (FIPS 203 ML-KEM.Encaps draws exactly these 32 bytes).
        let (ciphertext, mlkem_secret) = key.encapsulate_deterministic(&B32::from(random::<32>()?));
        let mut pub_key = Vec::with_capacity(SERVER_SHARE_LEN);
        pub_key.extend_from_slice(&ciphertext);
        pub_key.extend_from_slice(&x25519.pub_key);
        Ok(CompletedKeyExchange {
            group: NamedGroup::X25519MLKEM768,
            pub_key,
            secret: combine(&mlkem_secret, &x25519.secret),
        })
    }

    fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
        None
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519MLKEM768
    }

    fn usable_for_version(&self, version: ProtocolVersion) -> bool {
        version == ProtocolVersion::TLSv1_3
    }
}

/// ML-KEM's secret first, as the draft orders this group.
fn combine(mlkem: &[u8], x25519: &SharedSecret) -> SharedSecret {
    let mut secret = Vec::with_capacity(mlkem.len() + x25519.secret_bytes().len());
    secret.extend_from_slice(mlkem);
    secret.extend_from_slice(x25519.secret_bytes());
    SharedSecret::from(secret)
}

/// A client's key exchange in flight. The decapsulation key zeroizes itself
/// when dropped (ml-kem's `zeroize` feature); rustls drops this as soon as
/// the server's share arrives, or with a failed handshake.
struct Active {
    x25519: Box<dyn ActiveKeyExchange>,
    mlkem: Box<DecapsulationKey>,
    share: Vec<u8>,
}

impl ActiveKeyExchange for Active {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, Error> {
        if peer_pub_key.len() != SERVER_SHARE_LEN {
            return Err(invalid_share());
        }
        let (ciphertext, x25519_share) = peer_pub_key.split_at(MLKEM768_CIPHERTEXT_LEN);
        let ciphertext = Array::try_from(ciphertext).map_err(|_| invalid_share())?;
        let x25519 = self.x25519.complete(x25519_share)?;
        // Decapsulation never fails: a forged ciphertext yields an unrelated
        // (implicit-rejection) secret, so the handshake fails at Finished.
        let mlkem_secret = self.mlkem.decapsulate(&ciphertext);
        Ok(combine(&mlkem_secret, &x25519))
    }

    /// Lets rustls send our X25519 share a second time on its own, and
    /// finish with it alone when the server picks plain X25519.
    fn hybrid_component(&self) -> Option<(NamedGroup, &[u8])> {
        Some((NamedGroup::X25519, self.x25519.pub_key()))
    }

    fn complete_hybrid_component(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, Error> {
        self.x25519.complete(peer_pub_key)
    }

    fn pub_key(&self) -> &[u8] {
        &self.share
    }

    fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
        None
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519MLKEM768
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_and_server() -> (Box<dyn ActiveKeyExchange>, CompletedKeyExchange) {
        let client = X25519MLKEM768.start().unwrap();
        let server = X25519MLKEM768.start_and_complete(client.pub_key()).unwrap();
        (client, server)
    }

    #[test]
    fn shares_have_the_drafts_sizes() {
        let (client, server) = client_and_server();
        assert_eq!(client.pub_key().len(), 1216);
        assert_eq!(server.pub_key.len(), 1120);
        assert_eq!(server.group, NamedGroup::X25519MLKEM768);
        assert_eq!(u16::from(X25519MLKEM768.name()), 0x11ec);
        assert_eq!(client.group(), NamedGroup::X25519MLKEM768);
    }

    #[test]
    fn client_and_server_agree() {
        let (client, server) = client_and_server();
        let client_secret = client.complete(&server.pub_key).unwrap();
        assert_eq!(client_secret.secret_bytes(), server.secret.secret_bytes());
        assert_eq!(client_secret.secret_bytes().len(), 64);
        // Fresh keys each time: two exchanges never share a secret.
        let (client, server2) = client_and_server();
        assert_ne!(server.secret.secret_bytes(), server2.secret.secret_bytes());
        drop(client);
    }

    /// Each half on its own: the first 32 bytes are ML-KEM's (decapsulated
    /// with the client's key), the last 32 are X25519's (ring's group).
    #[test]
    fn each_half_agrees_in_the_drafts_order() {
        let x25519 = X25519.start().unwrap();
        let mlkem = DecapsulationKey::from_seed(Array([7; 64]));
        let mut share = mlkem.encapsulation_key().to_bytes().to_vec();
        share.extend_from_slice(x25519.pub_key());
        let server = X25519MLKEM768.start_and_complete(&share).unwrap();

        let (ciphertext, x25519_reply) = server.pub_key.split_at(MLKEM768_CIPHERTEXT_LEN);
        let ciphertext = Array::try_from(ciphertext).unwrap();
        let mlkem_secret = mlkem.decapsulate(&ciphertext);
        let x25519_secret = x25519.complete(x25519_reply).unwrap();
        let (first, second) = server.secret.secret_bytes().split_at(32);
        assert_eq!(first, mlkem_secret.as_slice());
        assert_eq!(second, x25519_secret.secret_bytes());
    }

    #[test]
    fn hybrid_component_is_the_x25519_share_and_completes_alone() {
        let client = X25519MLKEM768.start().unwrap();
        let (group, share) = client.hybrid_component().unwrap();
        assert_eq!(group, NamedGroup::X25519);
        assert_eq!(share, &client.pub_key()[MLKEM768_ENCAPSULATION_KEY_LEN..]);
        let server = X25519.start_and_complete(share).unwrap();
        let secret = client.complete_hybrid_component(&server.pub_key).unwrap();
        assert_eq!(secret.secret_bytes(), server.secret.secret_bytes());
    }

    /// A bad share is the peer's fault (an alert), never a panic or a
    /// local error.
    fn assert_refused(what: &str, result: Result<(), Error>) {
        match result {
            Err(Error::PeerMisbehaved(PeerMisbehaved::InvalidKeyShare)) => {}
            Err(other) => panic!("{what}: unexpected error {other:?}"),
            Ok(()) => panic!("{what}: accepted"),
        }
    }

    #[test]
    fn malformed_client_shares_are_refused() {
        let good = X25519MLKEM768.start().unwrap().pub_key().to_vec();
        let mut unreduced = good.clone();
        // The first 12-bit coefficient set to 0xFFF, above q = 3329.
        unreduced[0] = 0xff;
        unreduced[1] |= 0x0f;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("x25519 only", good[MLKEM768_ENCAPSULATION_KEY_LEN..].to_vec()),
            ("one byte short", good[..good.len() - 1].to_vec()),
            ("one byte long", [&good[..], &[0]].concat()),
            ("server-sized", vec![0x42; SERVER_SHARE_LEN]),
            ("all ones", vec![0xff; CLIENT_SHARE_LEN]),
            ("unreduced ML-KEM key", unreduced),
            ("zero X25519 share", [&good[..MLKEM768_ENCAPSULATION_KEY_LEN], &[0; 32]].concat()),
        ];
        for (what, share) in cases {
            assert_refused(what, X25519MLKEM768.start_and_complete(&share).map(|_| ()));
        }
    }

    #[test]
    fn malformed_server_shares_are_refused() {
        let (_, server) = client_and_server();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("x25519 only", server.pub_key[MLKEM768_CIPHERTEXT_LEN..].to_vec()),
            ("one byte short", server.pub_key[..server.pub_key.len() - 1].to_vec()),
            ("client-sized", vec![0x42; CLIENT_SHARE_LEN]),
            ("zero X25519 share", [&server.pub_key[..MLKEM768_CIPHERTEXT_LEN], &[0; 32]].concat()),
        ];
        for (what, share) in cases {
            assert_refused(what, X25519MLKEM768.start().unwrap().complete(&share).map(|_| ()));
        }
    }

    /// A forged ciphertext of the right length is not an error here (ML-KEM's
    /// implicit rejection), but yields a secret the server does not have.
    #[test]
    fn garbage_ciphertext_gives_a_different_secret() {
        let client = X25519MLKEM768.start().unwrap();
        let server = X25519MLKEM768.start_and_complete(client.pub_key()).unwrap();
        let mut forged = server.pub_key.clone();
        forged[..MLKEM768_CIPHERTEXT_LEN].fill(0x5a);
        let secret = client.complete(&forged).unwrap();
        assert_ne!(secret.secret_bytes(), server.secret.secret_bytes());
    }

    #[test]
    fn provider_prefers_the_hybrid_then_x25519() {
        let names: Vec<_> = provider().kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(names[..2], [NamedGroup::X25519MLKEM768, NamedGroup::X25519]);
        let ring: Vec<_> =
            rustls::crypto::ring::default_provider().kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(names[1..], ring[..]);
    }
}
