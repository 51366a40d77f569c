//! The JSON shapes of the messages, and how strictly they are read.

use super::*;

#[test]
fn messages_have_the_documented_json_shape() {
    let hello: ClientMessage = serde_json::from_str(r#"{"type":"hello","protocol":1,"agent":"t"}"#).unwrap();
    assert_eq!(
        hello,
        ClientMessage::Hello { protocol: 1, agent: "t".into(), encodings: vec![], token: None, via: vec![] }
    );
    let sync: ClientMessage = serde_json::from_str(r#"{"type":"sync","id":7,"asset":"js/app.js"}"#).unwrap();
    assert_eq!(
        sync,
        ClientMessage::Sync {
            id: 7,
            asset: "js/app.js".into(),
            have: Have::default(),
            direct: false,
            no_patch: false
        }
    );
    let err = ServerMessage::Error { id: Some(7), code: ErrorCode::UnknownAsset, message: "x".into() };
    assert_eq!(
        serde_json::to_string(&err).unwrap(),
        r#"{"type":"error","id":7,"code":"unknown_asset","message":"x"}"#
    );
}

/// Each code's wire name is its `as_str`, and a code from a newer server is read as `other`
/// instead of failing the whole message.
#[test]
fn error_codes_round_trip_and_unknown_ones_are_other() {
    use ErrorCode::*;
    let all = [
        ProtocolVersion,
        BadMessage,
        TooLarge,
        BadPath,
        UnknownAsset,
        Internal,
        Unsupported,
        Unauthorized,
        ShuttingDown,
        IdleTimeout,
        Lagged,
        ReadOnly,
        Forbidden,
        Busy,
        Loop,
        Moved,
    ];
    for code in all {
        let json = serde_json::to_string(&code).unwrap();
        assert_eq!(json, format!("\"{}\"", code.as_str()));
        assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
    }
    let text = r#"{"type":"error","code":"from_the_future","message":"m"}"#;
    let parsed: ServerMessage = serde_json::from_str(text).unwrap();
    assert!(matches!(parsed, ServerMessage::Error { code: Other, .. }), "{parsed:?}");
}

#[test]
fn unknown_kinds_and_fields_are_rejected() {
    for bad in [
        r#"{"type":"shutdown"}"#,
        r#"{"type":"sync","id":"7","asset":"a"}"#,
        r#"{"type":"sync","id":1,"asset":"a","extra":1}"#,
        r#"{"type":"sync","id":1,"asset":"a","have":{"versions":["zz"]}}"#,
        r#"[1,2,3]"#,
    ] {
        assert!(serde_json::from_str::<ClientMessage>(bad).is_err(), "{bad}");
    }
}

#[test]
fn every_server_message_round_trips_and_needs_its_fields() {
    let v = crate::Hash([7; 32]);
    let limits = Limits { max_message_bytes: 1, max_have: 2, requests_per_minute: 3, bytes_per_minute: 4 };
    let asset = AssetPath::new("a.js").unwrap();
    let all = [
        ServerMessage::Welcome {
            protocol: 2,
            server: "s".into(),
            limits,
            encodings: vec!["zstd".into()],
            path: vec![],
            stale: None,
        },
        ServerMessage::Welcome {
            protocol: 2,
            server: "s".into(),
            limits,
            encodings: vec![],
            path: vec!["a1".into(), "b2".into()],
            stale: Some("upstream unreachable".into()),
        },
        ServerMessage::UpToDate { id: 1, version: v },
        ServerMessage::Update(Update {
            id: 2,
            asset: Some(asset.clone()),
            version: v,
            base: Some(0),
            params: Some(ChunkParams::default()),
            recipe: vec![RecipeOp::Copy(0, 3), RecipeOp::Chunk(v, 9), RecipeOp::Sent(5)],
            dict: true,
            offload: Some(crate::Offloaded { url: "/offload/ab".into(), bytes: 9 }),
        }),
        ServerMessage::UnknownBase { id: 3 },
        ServerMessage::Folder {
            id: 4,
            files: vec![FolderEntry { asset: asset.clone(), version: v }],
            removed: vec![],
            delta: false,
            version: None,
            packs: 0,
            more: true,
        },
        ServerMessage::Folder {
            id: 4,
            files: vec![],
            removed: vec![asset.clone()],
            delta: true,
            version: Some(v),
            packs: 3,
            more: false,
        },
        ServerMessage::Subscribed { id: 5, missing: false },
        ServerMessage::Subscribed { id: 6, missing: true },
        ServerMessage::Changed { asset: asset.clone(), version: Some(v) },
        ServerMessage::Changed { asset: asset.clone(), version: None },
        ServerMessage::Manifest {
            id: 7,
            version: Some(v),
            manifest: Some("AAE=".into()),
            received: "Bw==".into(),
        },
        ServerMessage::Manifest { id: 7, version: None, manifest: None, received: String::new() },
        ServerMessage::Uploaded { id: 8, version: v },
        ServerMessage::Conflict { id: 9, version: Some(v) },
        ServerMessage::Conflict { id: 9, version: None },
        ServerMessage::Deleted { id: 10 },
        ServerMessage::Shape { id: 12, shape: None },
        ServerMessage::Shape {
            id: 11,
            shape: Some(crate::shape::Shape {
                dirs: vec![asset.clone()],
                links: vec![crate::shape::Link { asset, target: "x/y".into() }],
                exec: vec![],
            }),
        },
        ServerMessage::Error { id: Some(6), code: ErrorCode::UnknownAsset, message: "m".into() },
        ServerMessage::Error { id: None, code: ErrorCode::BadMessage, message: "m".into() },
    ];
    for message in all {
        let json = serde_json::to_string(&message).unwrap();
        assert_eq!(serde_json::from_str::<ServerMessage>(&json).unwrap(), message, "{json}");
    }
    for bad in [
        r#"{"type":"up_to_date","id":1}"#,
        r#"{"type":"update","id":1,"version":"0707070707070707070707070707070707070707070707070707070707070707"}"#,
        r#"{"type":"welcome","protocol":2,"server":"s"}"#,
        r#"{"type":"error","code":"internal"}"#,
        r#"{"type":"nope","id":1}"#,
        r#"{"id":1}"#,
        r#"{"type":"subscribed","id":"1"}"#,
        r#"{"type":"deleted"}"#,
        r#"{"type":"uploaded","id":1}"#,
    ] {
        assert!(serde_json::from_str::<ServerMessage>(bad).is_err(), "{bad} accepted");
    }
}
