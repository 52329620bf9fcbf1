//! Hot reload: content changes are seen, broken files keep the last good set.

use gavel_core::{Action, ActionClass, HumanId, PolicyEngine, PolicyVerdict, Principal, Resource};
use gavel_policy::{CedarEngine, Reload};

fn read() -> Action {
    Action {
        principal: Principal::Agent {
            id: "bot".into(),
            owner: HumanId::from("o@x"),
            groups: vec![],
            on_behalf_of: None,
        },
        resource: Resource {
            name: "db".into(),
            kind: "postgres".into(),
            tags: Default::default(),
        },
        class: ActionClass::SqlRead,
        operation: "SELECT 1".into(),
        details: serde_json::json!({}),
        intent: String::new(),
        data_context: serde_json::Value::Null,
        settings: Default::default(),
        surface: "test".into(),
        source: None,
    }
}

#[test]
fn same_size_edits_reload_and_broken_files_keep_the_last_good_set() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.cedar");
    std::fs::write(&file, "permit(principal, action, resource);").unwrap();
    let engine = CedarEngine::load(dir.path()).unwrap();
    assert_eq!(engine.evaluate(&read()).verdict, PolicyVerdict::Allow);
    assert_eq!(engine.reload_if_changed(), Reload::Unchanged);

    // Same length, written within the same instant: only content differs.
    std::fs::write(&file, "forbid(principal, action, resource);").unwrap();
    assert!(matches!(
        engine.reload_if_changed(),
        Reload::Reloaded { .. }
    ));
    assert_eq!(engine.evaluate(&read()).verdict, PolicyVerdict::Deny);

    std::fs::write(&file, "permit(principal, action resource);").unwrap();
    let Reload::Failed(errors) = engine.reload_if_changed() else {
        panic!("a broken file must fail the reload");
    };
    assert!(errors.to_string().contains("p.cedar:1:"), "{errors}");
    assert!(engine.last_error().is_some());
    assert_eq!(
        engine.evaluate(&read()).verdict,
        PolicyVerdict::Deny,
        "last good set stays"
    );
    // Asking again while still broken neither reloads nor forgets the error.
    assert_eq!(engine.reload_if_changed(), Reload::Unchanged);
    assert!(engine.last_error().is_some());

    std::fs::write(&file, "permit(principal, action, resource);").unwrap();
    assert!(matches!(
        engine.reload_if_changed(),
        Reload::Reloaded { .. }
    ));
    assert!(engine.last_error().is_none());
    assert_eq!(engine.evaluate(&read()).verdict, PolicyVerdict::Allow);
}
