//! weft's extensions to Linkerd's `io.linkerd.proxy.outbound.OutboundPolicy`.
//!
//! Linkerd's message has no slot for RequestMirror, URLRewrite or hedging.
//! weft sends them in the same message as field 1000, which every protobuf
//! decoder skips as unknown: a Linkerd proxy reading weft-destination's
//! answer sees a plain Linkerd policy, and weft's proxy reading Linkerd's
//! control plane sees no extensions. The types are written by hand (no
//! protoc, no build script); the wire shape is:
//!
//! ```proto
//! message OutboundPolicy { ...Linkerd's fields...; RouteExtensions weft_extensions = 1000; }
//! message RouteExtensions { repeated RuleExtension rules = 1; }
//! message RuleExtension {
//!   io.linkerd.proxy.meta.Metadata route = 1;  // the route's metadata exactly as in the policy
//!   uint32 rule_index = 2;                     // the rule's index in that route
//!   repeated Mirror mirrors = 3;
//!   UrlRewrite url_rewrite = 4;
//!   Hedge hedge = 5;
//! }
//! message Mirror { io.linkerd.proxy.outbound.Backend backend = 1; io.linkerd.proxy.http_route.Ratio ratio = 2; }
//! message UrlRewrite { string hostname = 1; io.linkerd.proxy.http_route.PathModifier path = 2; }
//! message Hedge { google.protobuf.Duration after = 1; double percentile = 2; }
//! ```

use linkerd2_proxy_api::{http_route, meta, outbound};
use prost::{
    bytes::{Buf, BufMut},
    encoding::{self, DecodeContext, WireType},
    DecodeError,
};

/// The gRPC methods that carry [`OutboundPolicyWithExtensions`]: Linkerd's
/// own, with `TrafficSpec` as request.
pub const OUTBOUND_POLICIES_GET: &str = "/io.linkerd.proxy.outbound.OutboundPolicies/Get";
pub const OUTBOUND_POLICIES_WATCH: &str = "/io.linkerd.proxy.outbound.OutboundPolicies/Watch";

/// The field of Linkerd's `OutboundPolicy` weft's extensions travel in.
pub const EXTENSIONS_TAG: u32 = 1000;

/// Linkerd's `OutboundPolicy` plus weft's field 1000. Encodes as Linkerd's
/// message followed by field 1000; decodes either (a message without the
/// field has `extensions: None`).
#[derive(Clone, PartialEq, Debug, Default)]
pub struct OutboundPolicyWithExtensions {
    pub policy: outbound::OutboundPolicy,
    pub extensions: Option<RouteExtensions>,
}

// Written by hand: prost's derive cannot flatten another message's fields
// into this one, so every tag but ours is handed to Linkerd's type.
impl prost::Message for OutboundPolicyWithExtensions {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.policy.encode_raw(buf);
        if let Some(extensions) = &self.extensions {
            encoding::message::encode(EXTENSIONS_TAG, extensions, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == EXTENSIONS_TAG {
            let extensions = self.extensions.get_or_insert_with(Default::default);
            return encoding::message::merge(wire_type, extensions, buf, ctx);
        }
        self.policy.merge_field(tag, wire_type, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.policy.encoded_len()
            + self.extensions.as_ref().map_or(0, |e| encoding::message::encoded_len(EXTENSIONS_TAG, e))
    }

    fn clear(&mut self) {
        self.policy.clear();
        self.extensions = None;
    }
}

/// What weft adds to a policy's rules.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RouteExtensions {
    #[prost(message, repeated, tag = "1")]
    pub rules: Vec<RuleExtension>,
}

/// One rule's extensions, found by its route's metadata (as the policy
/// names the route, in whichever protocol's routes it appears) and the
/// rule's index in that route.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RuleExtension {
    #[prost(message, optional, tag = "1")]
    pub route: Option<meta::Metadata>,
    #[prost(uint32, tag = "2")]
    pub rule_index: u32,
    #[prost(message, repeated, tag = "3")]
    pub mirrors: Vec<Mirror>,
    #[prost(message, optional, tag = "4")]
    pub url_rewrite: Option<UrlRewrite>,
    #[prost(message, optional, tag = "5")]
    pub hedge: Option<Hedge>,
}

/// RequestMirror: a copy of `ratio` of the rule's requests (all when
/// unset) goes to `backend`, its answer ignored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Mirror {
    #[prost(message, optional, tag = "1")]
    pub backend: Option<outbound::Backend>,
    #[prost(message, optional, tag = "2")]
    pub ratio: Option<http_route::Ratio>,
}

/// URLRewrite: an empty `hostname` keeps the request's.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UrlRewrite {
    #[prost(string, tag = "1")]
    pub hostname: String,
    #[prost(message, optional, tag = "2")]
    pub path: Option<http_route::PathModifier>,
}

/// When to hedge: exactly one of a fixed delay (`after`) or a percentile
/// (e.g. 95.0) of the rule's observed latency.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hedge {
    #[prost(message, optional, tag = "1")]
    pub after: Option<prost_types::Duration>,
    #[prost(double, tag = "2")]
    pub percentile: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use linkerd2_proxy_api::outbound::{proxy_protocol, ProxyProtocol};
    use prost::Message;

    fn service() -> Option<meta::Metadata> {
        Some(meta::Metadata {
            kind: Some(meta::metadata::Kind::Resource(meta::Resource {
                group: "core".into(),
                kind: "Service".into(),
                name: "web".into(),
                namespace: "emojivoto".into(),
                section: String::new(),
                port: 80,
            })),
        })
    }

    fn policy() -> outbound::OutboundPolicy {
        outbound::OutboundPolicy {
            metadata: service(),
            protocol: Some(ProxyProtocol {
                kind: Some(proxy_protocol::Kind::Http1(proxy_protocol::Http1 {
                    routes: vec![outbound::HttpRoute { metadata: service(), ..Default::default() }],
                    failure_accrual: None,
                })),
            }),
        }
    }

    fn extended() -> OutboundPolicyWithExtensions {
        let rule = RuleExtension {
            route: service(),
            rule_index: 2,
            mirrors: vec![Mirror {
                backend: Some(outbound::Backend { metadata: service(), ..Default::default() }),
                ratio: Some(http_route::Ratio { numerator: 1, denominator: 10 }),
            }],
            url_rewrite: Some(UrlRewrite {
                hostname: "shadow.example".into(),
                path: Some(http_route::PathModifier {
                    replace: Some(http_route::path_modifier::Replace::Prefix("/v2".into())),
                }),
            }),
            hedge: Some(Hedge {
                after: Some(prost_types::Duration { seconds: 0, nanos: 20_000_000 }),
                percentile: 0.0,
            }),
        };
        OutboundPolicyWithExtensions {
            policy: policy(),
            extensions: Some(RouteExtensions { rules: vec![rule] }),
        }
    }

    #[test]
    fn extensions_round_trip() {
        let msg = extended();
        let bytes = msg.encode_to_vec();
        assert_eq!(bytes.len(), msg.encoded_len());
        assert_eq!(OutboundPolicyWithExtensions::decode(bytes.as_slice()).unwrap(), msg);
    }

    #[test]
    fn linkerd_sees_its_own_policy_in_the_extended_message() {
        let msg = extended();
        let bytes = msg.encode_to_vec();
        assert!(bytes.len() > msg.policy.encoded_len(), "field 1000 is on the wire");
        assert_eq!(outbound::OutboundPolicy::decode(bytes.as_slice()).unwrap(), msg.policy);
    }

    #[test]
    fn a_linkerd_message_has_no_extensions() {
        let bytes = policy().encode_to_vec();
        let msg = OutboundPolicyWithExtensions::decode(bytes.as_slice()).unwrap();
        assert_eq!(msg, OutboundPolicyWithExtensions { policy: policy(), extensions: None });
    }

    #[test]
    fn a_malformed_extension_is_a_decode_error() {
        let mut bytes = policy().encode_to_vec();
        // Field 1000, length-delimited, claiming 5 bytes that are not there.
        encoding::encode_key(EXTENSIONS_TAG, WireType::LengthDelimited, &mut bytes);
        encoding::encode_varint(5, &mut bytes);
        bytes.push(0x08);
        assert!(OutboundPolicyWithExtensions::decode(bytes.as_slice()).is_err());
    }
}
