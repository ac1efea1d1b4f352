//! Decoder tests on hand-built bytes, including every truncation of every
//! message kind.

use bytes::{BufMut, Bytes, BytesMut};

use super::testutil::*;
use super::*;

fn t(s: &str) -> Cell {
    Cell::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn samples() -> Vec<Bytes> {
    vec![
        begin(0x16_B374_D848, 700_000_000_000_000, 42),
        commit(0x16_B374_D848, 0x16_B374_D878, 700_000_000_000_001),
        origin(0x1234, "node_a"),
        type_msg(16_400, "public", "mood"),
        relation(
            16_384,
            "public",
            "users",
            b'd',
            &[(true, "id", 23, -1), (false, "name", 1043, 24)],
        ),
        relation(1, "", "t", b'n', &[]),
        insert(16_384, &[C::T("1"), C::N, C::T("")]),
        insert(7, &[]),
        update(16_384, None, &[C::T("1"), C::U]),
        update(
            16_384,
            Some((b'K', &[C::T("1"), C::N])),
            &[C::T("2"), C::T("x")],
        ),
        update(
            16_384,
            Some((b'O', &[C::T("1"), C::T("big")])),
            &[C::T("1"), C::U],
        ),
        delete(16_384, b'K', &[C::T("1"), C::N]),
        delete(16_384, b'O', &[C::T("1"), C::T("y")]),
        truncate(3, &[1, 2, 3]),
        truncate(0, &[]),
        message(true, 99, "pfx", b"hello\0world"),
        message(false, 100, "", b""),
        insert(9, &[C::B(&[0, 1, 2])]),
    ]
}

#[test]
fn begin_commit() {
    assert_eq!(
        decode(&begin(10, -5, 7)).unwrap(),
        PgOutput::Begin(Begin {
            final_lsn: 10,
            commit_time: -5,
            xid: 7
        })
    );
    assert_eq!(
        decode(&commit(10, 20, 30)).unwrap(),
        PgOutput::Commit(Commit {
            flags: 0,
            commit_lsn: 10,
            end_lsn: 20,
            commit_time: 30
        })
    );
}

#[test]
fn origin_type_message() {
    assert_eq!(
        decode(&origin(5, "o")).unwrap(),
        PgOutput::Origin(Origin {
            commit_lsn: 5,
            name: "o".into()
        })
    );
    assert_eq!(
        decode(&type_msg(1, "public", "mood")).unwrap(),
        PgOutput::Type(TypeMsg {
            oid: 1,
            namespace: "public".into(),
            name: "mood".into()
        })
    );
    assert_eq!(
        decode(&message(true, 9, "p", b"a\0b")).unwrap(),
        PgOutput::Message(LogicalMessage {
            transactional: true,
            lsn: 9,
            prefix: "p".into(),
            content: Bytes::from_static(b"a\0b")
        })
    );
}

#[test]
fn relation_fields() {
    let m = relation(
        16_384,
        "public",
        "users",
        b'f',
        &[(true, "id", 23, -1), (false, "näme", 1043, 24)],
    );
    let PgOutput::Relation(r) = decode(&m).unwrap() else {
        panic!("not a relation")
    };
    assert_eq!(r.relation_id, 16_384);
    assert_eq!(r.namespace, "public");
    assert_eq!(r.name, "users");
    assert_eq!(r.replica_identity, ReplicaIdentity::Full);
    assert_eq!(
        r.columns,
        vec![
            Column {
                key: true,
                name: "id".into(),
                type_oid: 23,
                type_modifier: -1
            },
            Column {
                key: false,
                name: "näme".into(),
                type_oid: 1043,
                type_modifier: 24
            }
        ]
    );
    for (c, want) in [
        (b'd', ReplicaIdentity::Default),
        (b'n', ReplicaIdentity::Nothing),
        (b'i', ReplicaIdentity::Index),
    ] {
        let PgOutput::Relation(r) = decode(&relation(1, "s", "t", c, &[])).unwrap() else {
            panic!()
        };
        assert_eq!(r.replica_identity, want);
    }
    let e = decode(&relation(1, "s", "t", b'x', &[])).unwrap_err();
    assert!(e.to_string().contains("replica identity"), "{e}");
}

#[test]
fn insert_cells_zero_copy() {
    let m = insert(5, &[C::T("1"), C::N, C::U, C::T(""), C::B(&[9])]);
    let PgOutput::Insert(i) = decode(&m).unwrap() else {
        panic!()
    };
    assert_eq!(i.relation_id, 5);
    assert_eq!(i.new.len(), 5);
    let cells = i.new.cells();
    assert_eq!(
        cells,
        vec![
            t("1"),
            Cell::Null,
            Cell::Unchanged,
            t(""),
            Cell::Binary(Bytes::from_static(&[9]))
        ]
    );
    // The value points into the input buffer.
    if let Cell::Text(v) = &cells[0] {
        let range = m.as_ptr() as usize..m.as_ptr() as usize + m.len();
        assert!(range.contains(&(v.as_ptr() as usize)));
    }
    let refs: Vec<_> = i.new.iter().collect();
    assert_eq!(refs[0], CellRef::Text(b"1"));
    assert_eq!(refs[1], CellRef::Null);
    assert_eq!(refs[2], CellRef::Unchanged);
}

#[test]
fn update_variants() {
    let PgOutput::Update(u) = decode(&update(3, None, &[C::T("a")])).unwrap() else {
        panic!()
    };
    assert_eq!(u.relation_id, 3);
    assert!(u.old.is_none());
    assert_eq!(u.new.cells(), vec![t("a")]);

    for (k, kind) in [(b'K', OldKind::Key), (b'O', OldKind::Full)] {
        let PgOutput::Update(u) = decode(&update(
            3,
            Some((k, &[C::T("o"), C::N])),
            &[C::T("n"), C::U],
        ))
        .unwrap() else {
            panic!()
        };
        let old = u.old.unwrap();
        assert_eq!(old.kind, kind);
        assert_eq!(old.tuple.cells(), vec![t("o"), Cell::Null]);
        assert_eq!(u.new.cells(), vec![t("n"), Cell::Unchanged]);
    }
    // Old tuple but no 'N' after it.
    let mut b = BytesMut::new();
    b.put_u8(b'U');
    b.put_u32(3);
    b.put_u8(b'K');
    tuple(&mut b, &[C::T("o")]);
    b.put_u8(b'X');
    tuple(&mut b, &[C::T("n")]);
    let e = decode(&b.freeze()).unwrap_err();
    assert!(e.to_string().contains("expected new tuple"), "{e}");
}

#[test]
fn delete_variants() {
    let PgOutput::Delete(d) = decode(&delete(4, b'O', &[C::T("x")])).unwrap() else {
        panic!()
    };
    assert_eq!(d.relation_id, 4);
    assert_eq!(d.old.kind, OldKind::Full);
    assert_eq!(d.old.tuple.cells(), vec![t("x")]);
    let e = decode(&delete(4, b'N', &[C::T("x")])).unwrap_err();
    assert!(e.to_string().contains("'K' or 'O'"), "{e}");
}

#[test]
fn truncate_fields() {
    assert_eq!(
        decode(&truncate(3, &[7, 8])).unwrap(),
        PgOutput::Truncate(Truncate {
            options: Truncate::CASCADE | Truncate::RESTART_IDENTITY,
            relation_ids: vec![7, 8]
        })
    );
}

#[test]
fn every_prefix_is_an_error() {
    for m in samples() {
        assert!(decode(&m).is_ok(), "sample {m:?}");
        for cut in 0..m.len() {
            let prefix = m.slice(..cut);
            assert!(decode(&prefix).is_err(), "prefix {cut} of {m:?} decoded");
        }
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    for m in samples() {
        let mut b = BytesMut::from(&m[..]);
        b.put_u8(0);
        let e = decode(&b.freeze()).unwrap_err();
        assert!(e.to_string().contains("trailing"), "{e}");
    }
}

#[test]
fn every_single_byte_corruption_is_safe() {
    // No panic whatever one byte becomes (result may be Ok or Err).
    for m in samples() {
        for i in 0..m.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff, b'n', b't', b'u'] {
                let mut b = BytesMut::from(&m[..]);
                b[i] = v;
                let b = b.freeze();
                if let Ok(PgOutput::Insert(ins)) = decode(&b) {
                    let _ = ins.new.cells();
                }
            }
        }
    }
}

#[test]
fn huge_counts_do_not_allocate() {
    // Relation with 32767 columns declared, none present.
    let mut b = BytesMut::new();
    b.put_u8(b'R');
    b.put_u32(1);
    b.put_slice(b"s\0t\0d");
    b.put_i16(i16::MAX);
    let e = decode(&b.freeze()).unwrap_err();
    assert!(e.to_string().contains("column count"), "{e}");
    // Truncate declaring 2^31-1 relations.
    let mut b = BytesMut::new();
    b.put_u8(b'T');
    b.put_i32(i32::MAX);
    b.put_u8(0);
    b.put_u32(1);
    assert!(decode(&b.freeze()).is_err());
    // Negative counts and lengths.
    let mut b = BytesMut::new();
    b.put_u8(b'T');
    b.put_i32(-1);
    b.put_u8(0);
    assert!(decode(&b.freeze())
        .unwrap_err()
        .to_string()
        .contains("negative"));
    let mut b = BytesMut::new();
    b.put_u8(b'I');
    b.put_u32(1);
    b.put_u8(b'N');
    b.put_i16(1);
    b.put_u8(b't');
    b.put_i32(-5);
    assert!(decode(&b.freeze())
        .unwrap_err()
        .to_string()
        .contains("negative"));
    // Value length larger than the buffer.
    let mut b = BytesMut::new();
    b.put_u8(b'I');
    b.put_u32(1);
    b.put_u8(b'N');
    b.put_i16(1);
    b.put_u8(b't');
    b.put_i32(i32::MAX);
    b.put_slice(b"abc");
    assert!(decode(&b.freeze()).is_err());
}

#[test]
fn bad_tags() {
    assert_eq!(decode(&Bytes::new()).unwrap_err(), DecodeError::Empty);
    assert!(matches!(
        decode(&Bytes::from_static(b"Z")).unwrap_err(),
        DecodeError::UnknownTag { tag: 'Z', .. }
    ));
    assert!(matches!(
        decode(&Bytes::from_static(b"S\0\0\0\x01\x01")).unwrap_err(),
        DecodeError::Unsupported { tag: 'S' }
    ));
    let e = decode(&insert(1, &[])).unwrap();
    assert!(matches!(e, PgOutput::Insert(_)));
    // Unknown cell kind.
    let mut b = BytesMut::new();
    b.put_u8(b'I');
    b.put_u32(1);
    b.put_u8(b'N');
    b.put_i16(1);
    b.put_u8(b'x');
    let e = decode(&b.freeze()).unwrap_err();
    assert!(e.to_string().contains("cell kind"), "{e}");
    // Non-UTF-8 name.
    let mut b = BytesMut::new();
    b.put_u8(b'Y');
    b.put_u32(1);
    b.put_slice(b"\xff\0n\0");
    assert!(decode(&b.freeze())
        .unwrap_err()
        .to_string()
        .contains("UTF-8"));
}
