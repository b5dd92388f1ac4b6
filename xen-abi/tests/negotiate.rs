//! Privilege negotiation: every row of the table in both launch modes, required
//! feature policy, and the `XENVER_get_features` submap.

mod common;
use common::*;
use xen_abi::elfnote::*;
use xen_abi::features::*;
use xen_abi::negotiate::*;

use LaunchMode::{Privileged, Unprivileged};

fn check(extra: &[Vec<u8>], mode: LaunchMode) -> Result<(), LaunchRefusal> {
    let img = image_with(extra);
    let p = parse_xen_notes(&img).unwrap().kernel_params().unwrap();
    check_launch(&p, mode)
}

fn supported(bits: u32) -> Vec<u8> {
    xraw(XEN_ELFNOTE_SUPPORTED_FEATURES, &bits.to_le_bytes())
}

#[test]
fn row1_nothing_about_privilege_is_allowed_both_ways() {
    assert_eq!(check(&[], Privileged), Ok(()));
    assert_eq!(check(&[], Unprivileged), Ok(()));
    let f = [xstr(XEN_ELFNOTE_FEATURES, "writable_page_tables")];
    assert_eq!(check(&f, Privileged), Ok(()));
    assert_eq!(check(&f, Unprivileged), Ok(()));
}

#[test]
fn row2_supported_note_without_bit_11_refuses_privileged_only() {
    let n = [supported(1 << XENFEAT_WRITABLE_PAGE_TABLES)];
    let e = check(&n, Privileged).unwrap_err();
    assert_eq!(e, LaunchRefusal::NotPrivilegedCapable);
    assert!(
        e.to_string()
            .starts_with("kernel does not support privileged (dom0) operation"),
        "{e}"
    );
    assert_eq!(check(&n, Unprivileged), Ok(()));
    // An empty bitmap is still a note without bit 11.
    let n = [xraw(XEN_ELFNOTE_SUPPORTED_FEATURES, &[])];
    assert_eq!(
        check(&n, Privileged),
        Err(LaunchRefusal::NotPrivilegedCapable)
    );
}

#[test]
fn row3_bit_11_in_note_or_dom0_in_features_is_allowed_both_ways() {
    for n in [
        vec![supported(1 << XENFEAT_DOM0)],
        vec![xstr(XEN_ELFNOTE_FEATURES, "dom0")],
        // note without bit 11, but dom0 in FEATURES: Xen ORs both into f_supported.
        vec![supported(1), xstr(XEN_ELFNOTE_FEATURES, "dom0")],
    ] {
        assert_eq!(check(&n, Privileged), Ok(()), "{n:?}");
        assert_eq!(check(&n, Unprivileged), Ok(()), "{n:?}");
    }
}

#[test]
fn row4_required_dom0_refuses_unprivileged_only() {
    let n = [xstr(XEN_ELFNOTE_FEATURES, "!dom0")];
    assert_eq!(check(&n, Privileged), Ok(()));
    let e = check(&n, Unprivileged).unwrap_err();
    assert_eq!(e, LaunchRefusal::RequiresPrivileged);
    assert!(
        e.to_string()
            .starts_with("kernel requires privileged (dom0) operation"),
        "{e}"
    );
}

#[test]
fn row5_bit_12_without_bit_11_refuses_privileged_only() {
    let n = [supported(1 << XENFEAT_UNPRIVILEGED)];
    assert_eq!(
        check(&n, Privileged),
        Err(LaunchRefusal::NotPrivilegedCapable)
    );
    assert_eq!(check(&n, Unprivileged), Ok(()));
    // With bit 11 too: both.
    let n = [supported((1 << XENFEAT_UNPRIVILEGED) | (1 << XENFEAT_DOM0))];
    assert_eq!(check(&n, Privileged), Ok(()));
    assert_eq!(check(&n, Unprivileged), Ok(()));
}

#[test]
fn debian_like_kernel_is_accepted_in_both_modes() {
    let img = Builder::with_segment_notes(cat(&debian_notes())).build();
    let p = parse_xen_notes(&img).unwrap().kernel_params().unwrap();
    assert_eq!(check_launch(&p, Privileged), Ok(()));
    assert_eq!(check_launch(&p, Unprivileged), Ok(()));
}

#[test]
fn unknown_required_feature_refuses_and_is_named() {
    let n = [xstr(XEN_ELFNOTE_FEATURES, "dom0|!quantum_paging|!other")];
    for mode in [Privileged, Unprivileged] {
        let e = check(&n, mode).unwrap_err();
        assert!(
            matches!(e, LaunchRefusal::UnknownRequiredFeature { .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("\"quantum_paging\""), "{e}");
    }
    // Unknown names that are not required are ignored.
    assert_eq!(
        check(&[xstr(XEN_ELFNOTE_FEATURES, "quantum_paging")], Privileged),
        Ok(())
    );
}

#[test]
fn required_features_follow_the_policy_table() {
    for (name, refused) in [
        ("writable_page_tables", false),
        ("pae_pgdir_above_4gb", false),
        ("auto_translated_physmap", true),
        ("supervisor_mode_kernel", true),
        ("writable_descriptor_tables", true),
        ("hvm_callback_vector", true),
    ] {
        let n = [xstr(XEN_ELFNOTE_FEATURES, &format!("!{name}"))];
        for mode in [Privileged, Unprivileged] {
            let r = check(&n, mode);
            if refused {
                let e = r.unwrap_err();
                assert!(
                    matches!(e, LaunchRefusal::UnsupportedRequiredFeature { name: n, .. } if n == name),
                    "{e:?}"
                );
                assert!(e.to_string().contains(name), "{e}");
            } else {
                assert_eq!(r, Ok(()), "{name}");
            }
        }
        // Merely supported (not required): never refused.
        assert_eq!(
            check(&[xstr(XEN_ELFNOTE_FEATURES, name)], Unprivileged),
            Ok(())
        );
    }
    let e = check(
        &[xstr(XEN_ELFNOTE_FEATURES, "!auto_translated_physmap")],
        Privileged,
    )
    .unwrap_err();
    assert!(e.to_string().contains("not supported for PV"), "{e}");
}

#[test]
fn policy_table_covers_exactly_xens_feature_names() {
    let bits: Vec<u32> = REQUIRED_FEATURE_POLICY.iter().map(|(b, _)| *b).collect();
    let names: Vec<u32> = ELFNOTE_FEATURE_NAMES.iter().map(|(_, b)| *b).collect();
    assert_eq!(bits, names);
}

fn note_set(bits: u32) -> FeatureSet {
    FeatureSet::from_words([bits, 0, 0, 0])
}

#[test]
fn submap_index_other_than_0_is_einval() {
    for idx in [1, 2, u32::MAX] {
        let e = features_submap_decl(Privileged, None, KXEN_IMPLEMENTED, idx).unwrap_err();
        assert_eq!(e, SubmapError::BadIndex { idx });
        assert_eq!(e.errno(), 22);
    }
}

#[test]
fn submap0_reports_implemented_plus_privilege_bits() {
    let implemented = FeatureSet::EMPTY.with(XENFEAT_WRITABLE_PAGE_TABLES).with(5);
    // Privileged: bit 11 added.
    assert_eq!(
        features_submap_decl(Privileged, None, implemented, 0),
        Ok(0x821)
    );
    // Unprivileged, kernel silent: no privilege bits.
    assert_eq!(
        features_submap_decl(Unprivileged, None, implemented, 0),
        Ok(0x21)
    );
    // Unprivileged, kernel declared bit 12: bit 12 added.
    let n = note_set(1 << 12);
    assert_eq!(
        features_submap_decl(Unprivileged, Some(&n), implemented, 0),
        Ok(0x1021)
    );
    // Privileged kernel declaring bit 12 gets bit 11 only.
    let n = note_set((1 << 12) | (1 << 11));
    assert_eq!(
        features_submap_decl(Privileged, Some(&n), implemented, 0),
        Ok(0x821)
    );
    // Unprivileged with a note lacking bit 12: none.
    let n = note_set(0x8801);
    assert_eq!(
        features_submap_decl(Unprivileged, Some(&n), implemented, 0),
        Ok(0x21)
    );
}

#[test]
fn submap0_never_leaks_privilege_bits_from_implemented() {
    let implemented = FeatureSet::EMPTY
        .with(XENFEAT_DOM0)
        .with(XENFEAT_UNPRIVILEGED);
    assert_eq!(
        features_submap_decl(Unprivileged, None, implemented, 0),
        Ok(0)
    );
}

#[test]
fn kxen_reports_exactly_the_pv_features_it_implements() {
    // preserve_ad (5), highmem_assist (6), gnttab_map_avail_bits (7)
    assert_eq!(KXEN_IMPLEMENTED.submap(0), 0xe0);
    let img = image_with(&[supported(1 << 12)]);
    let p = parse_xen_notes(&img).unwrap().kernel_params().unwrap();
    assert_eq!(
        features_submap(Unprivileged, &p, KXEN_IMPLEMENTED, 0),
        Ok(0xe0 | 1 << 12)
    );
    assert_eq!(
        features_submap(Privileged, &p, KXEN_IMPLEMENTED, 0),
        Ok(0xe0 | 1 << 11)
    );
}

#[test]
fn check_launch_decl_works_on_a_bare_declaration() {
    let mut decl = FeatureDecl::default();
    assert_eq!(check_launch_decl(&decl, None, Privileged), Ok(()));
    decl.parse_into("!dom0").unwrap();
    assert_eq!(
        check_launch_decl(&decl, None, Unprivileged),
        Err(LaunchRefusal::RequiresPrivileged)
    );
    let note = FeatureSet::EMPTY.with(XENFEAT_UNPRIVILEGED);
    let mut decl = FeatureDecl::default();
    decl.supported = note;
    assert_eq!(
        check_launch_decl(&decl, Some(&note), Privileged),
        Err(LaunchRefusal::NotPrivilegedCapable)
    );
}
