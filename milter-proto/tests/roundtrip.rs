//! Properties: decode(encode(x)) == x for every command and reply; every strict prefix needs
//! more and consumes nothing; arbitrary bytes never panic.

use bytes::{Bytes, BytesMut};
use milter_proto::MacroStage;
use milter_proto::Reply;
use milter_proto::{Actions, Protocol};
use milter_proto::{Command, ConnAddr};
use milter_proto::{DEFAULT_MAX_FRAME_LEN, decode_frame};
use proptest::prelude::*;

fn stage() -> impl Strategy<Value = MacroStage> {
    proptest::sample::select(MacroStage::ALL.to_vec())
}

fn s() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(1u8..=255, 0..20).prop_map(Bytes::from)
}
fn raw() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(v, a, p)| Command::OptNeg {
            version: v,
            actions: Actions::from_bits_retain(a),
            protocol: Protocol::from_bits_retain(p)
        }),
        (any::<u8>(), proptest::collection::vec((s(), s()), 0..4)).prop_map(|(stage, pairs)| {
            Command::Macro {
                command: stage,
                pairs,
            }
        }),
        (s(), any::<u16>(), s(), 0u8..4).prop_map(|(h, port, a, f)| Command::Connect {
            hostname: h,
            addr: match f {
                0 => ConnAddr::Inet { port, address: a },
                1 => ConnAddr::Inet6 { port, address: a },
                2 => ConnAddr::Unix { port, path: a },
                _ => ConnAddr::Unknown,
            }
        }),
        s().prop_map(Command::Helo),
        (s(), proptest::collection::vec(s(), 0..3))
            .prop_map(|(sender, args)| Command::Mail { sender, args }),
        (s(), proptest::collection::vec(s(), 0..3))
            .prop_map(|(rcpt, args)| Command::Rcpt { rcpt, args }),
        Just(Command::Data),
        (s(), s()).prop_map(|(name, value)| Command::Header { name, value }),
        Just(Command::Eoh),
        raw().prop_map(Command::Body),
        raw().prop_map(Command::BodyEob),
        Just(Command::Abort),
        Just(Command::Quit),
        Just(Command::QuitNc),
        s().prop_map(Command::Unknown),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec((stage(), s()), 0..3)
        )
            .prop_map(|(v, a, p, macros)| Reply::OptNeg {
                version: v,
                actions: Actions::from_bits_retain(a),
                protocol: Protocol::from_bits_retain(p),
                macros
            }),
        prop_oneof![
            Just(Reply::Continue),
            Just(Reply::Accept),
            Just(Reply::Reject),
            Just(Reply::Tempfail),
            Just(Reply::Discard),
            Just(Reply::Skip),
            Just(Reply::Progress),
            Just(Reply::ConnFail),
            Just(Reply::Shutdown),
        ],
        s().prop_map(Reply::ReplyCode),
        (s(), s()).prop_map(|(name, value)| Reply::AddHeader { name, value }),
        (any::<u32>(), s(), s()).prop_map(|(index, name, value)| Reply::InsHeader {
            index,
            name,
            value
        }),
        (any::<u32>(), s(), s()).prop_map(|(index, name, value)| Reply::ChgHeader {
            index,
            name,
            value
        }),
        s().prop_map(Reply::AddRcpt),
        (s(), proptest::option::of(s())).prop_map(|(rcpt, args)| Reply::AddRcptPar { rcpt, args }),
        s().prop_map(Reply::DelRcpt),
        (s(), proptest::option::of(s())).prop_map(|(from, args)| Reply::ChgFrom { from, args }),
        raw().prop_map(Reply::ReplBody),
        s().prop_map(Reply::Quarantine),
        (stage(), s()).prop_map(|(stage, names)| Reply::SetSymList { stage, names }),
    ]
}

proptest! {
    #[test]
    fn command_roundtrip_and_prefixes(c in command()) {
        let mut enc = BytesMut::new();
        c.encode(&mut enc);
        for cut in 0..enc.len() {
            let mut part = BytesMut::from(&enc[..cut]);
            prop_assert_eq!(Command::decode(&mut part, DEFAULT_MAX_FRAME_LEN), Ok(None));
            prop_assert_eq!(part.len(), cut);
        }
        let mut buf = enc.clone();
        prop_assert_eq!(Command::decode(&mut buf, DEFAULT_MAX_FRAME_LEN), Ok(Some(c)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn reply_roundtrip_and_prefixes(r in reply()) {
        let mut enc = BytesMut::new();
        r.encode(&mut enc);
        for cut in 0..enc.len() {
            let mut part = BytesMut::from(&enc[..cut]);
            prop_assert_eq!(Reply::decode(&mut part, DEFAULT_MAX_FRAME_LEN), Ok(None));
            prop_assert_eq!(part.len(), cut);
        }
        let mut buf = enc.clone();
        prop_assert_eq!(Reply::decode(&mut buf, DEFAULT_MAX_FRAME_LEN), Ok(Some(r)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut a = BytesMut::from(&data[..]);
        while let Ok(Some(_)) = Command::decode(&mut a, DEFAULT_MAX_FRAME_LEN) {}
        let mut b = BytesMut::from(&data[..]);
        while let Ok(Some(_)) = Reply::decode(&mut b, DEFAULT_MAX_FRAME_LEN) {}
        let mut f = BytesMut::from(&data[..]);
        while let Ok(Some(_)) = decode_frame(&mut f, DEFAULT_MAX_FRAME_LEN) {}
        // Decoders only ever consume from the front.
        prop_assert!(a.len() <= data.len() && b.len() <= data.len());
    }
}

#[test]
fn postfix_connect_bytes_decode() {
    // CONNECT from Postfix: "mx.example\0" '4' port 25 "192.0.2.1\0".
    let mut p = vec![0, 0, 0, 0, b'C'];
    p.extend_from_slice(b"mx.example\0");
    p.push(b'4');
    p.extend_from_slice(&25u16.to_be_bytes());
    p.extend_from_slice(b"192.0.2.1\0");
    let len = u32::try_from(p.len() - 4).unwrap().to_be_bytes();
    p[..4].copy_from_slice(&len);
    let mut buf = BytesMut::from(&p[..]);
    assert_eq!(
        Command::decode(&mut buf, DEFAULT_MAX_FRAME_LEN),
        Ok(Some(Command::Connect {
            hostname: Bytes::from_static(b"mx.example"),
            addr: ConnAddr::Inet {
                port: 25,
                address: Bytes::from_static(b"192.0.2.1")
            },
        }))
    );
}

#[test]
fn missing_nul_and_trailing_bytes_are_errors() {
    let mut buf = BytesMut::from(&[0u8, 0, 0, 3, b'H', b'a', b'b'][..]);
    assert!(Command::decode(&mut buf, DEFAULT_MAX_FRAME_LEN).is_err());
    let mut buf = BytesMut::from(&[0u8, 0, 0, 2, b'c', b'x'][..]);
    assert!(Reply::decode(&mut buf, DEFAULT_MAX_FRAME_LEN).is_err());
}
