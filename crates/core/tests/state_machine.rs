//! Property tests over random event sequences against the SPEC §4 rules.

use gavel_core::*;
use proptest::prelude::*;
use std::time::Duration;

const OWNER: &str = "owner@x";

fn human(id: &str, groups: &[&str]) -> Principal {
    Principal::Human(Human {
        id: HumanId::from(id),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    })
}

/// The cast: index 0 is the initiating agent, 1 its owner (who is even in
/// the approver group), 2 another agent in the group, 3 a human outside the
/// group, 4.. eligible approvers.
fn cast() -> Vec<Principal> {
    vec![
        Principal::Agent {
            id: "bot".into(),
            owner: HumanId::from(OWNER),
            groups: vec!["dba".into()],
            on_behalf_of: None,
        },
        human(OWNER, &["dba"]),
        Principal::Agent {
            id: "other-bot".into(),
            owner: HumanId::from("someone@x"),
            groups: vec!["dba".into()],
            on_behalf_of: None,
        },
        human("outsider@x", &["dev"]),
        human("a@x", &["dba"]),
        human("b@x", &["dba"]),
        human("c@x", &["dba"]),
        human("named@x", &[]),
    ]
}

fn eligible(p: &Principal) -> bool {
    matches!(p, Principal::Human(h) if h.id.0 != OWNER && h.id.0 != "outsider@x")
}

fn request(quorum: u32) -> ApprovalRequest {
    let action = Action {
        principal: cast()[0].clone(),
        resource: Resource {
            name: "db".into(),
            kind: "postgres".into(),
            tags: Default::default(),
        },
        class: ActionClass::SqlDdl,
        operation: "DROP TABLE t".into(),
        details: serde_json::json!({}),
        intent: String::new(),
        data_context: serde_json::Value::Null,
        settings: Default::default(),
        surface: "test".into(),
        source: None,
    };
    let route = ApprovalRoute {
        approvers: vec![
            Approver::Group("dba".into()),
            Approver::User(HumanId::from("named@x")),
        ],
        quorum,
        timeout: Duration::from_secs(100),
    };
    let fp = Fingerprint::of(&action, "v", &["p".to_string()], &route);
    ApprovalRequest::new(
        action,
        fp,
        vec!["p".into()],
        "v".into(),
        route,
        Timestamp(0),
    )
}

#[derive(Debug, Clone)]
enum Event {
    Decide { who: usize, approve: bool },
    Tick(i64),
    UseGrant,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => (0..8usize, any::<bool>()).prop_map(|(who, a)| Event::Decide { who, approve: a || who % 3 != 0 }),
        1 => (1..60_000i64).prop_map(Event::Tick),
        2 => Just(Event::UseGrant),
    ]
}

fn allowed_edge(from: RequestState, to: RequestState) -> bool {
    use RequestState::*;
    from == to
        || matches!(
            (from, to),
            (Pending, Approved)
                | (Pending, Denied)
                | (Pending, Expired)
                | (Approved, Executed)
                | (Approved, Expired)
                | (Executed, Failed)
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn rules_hold_over_any_sequence(quorum in 1..4u32, events in prop::collection::vec(event(), 0..40)) {
        let people = cast();
        let ttl = Duration::from_secs(30);
        let mut r = request(quorum);
        let mut now = Timestamp(0);
        let mut grants_used = 0;
        let mut eligible_approvals: Vec<String> = Vec::new();
        for e in events {
            let before = r.clone();
            match e {
                Event::Tick(ms) => { now = Timestamp(now.0 + ms); r.expire_if_due(now); }
                Event::UseGrant => {
                    if r.use_grant(now, false) == GrantUse::Used { grants_used += 1; }
                }
                Event::Decide { who, approve } => {
                    let p = &people[who];
                    let d = if approve { Decision::Approve } else { Decision::Deny };
                    let res = r.decide(p, d, "", now, ttl);
                    if !eligible(p) {
                        // Ineligible deciders are refused and change nothing
                        // (beyond a time-based expiry that was due anyway).
                        prop_assert!(res.is_err(), "{p:?} was allowed to decide");
                        let mut expected = before.clone();
                        expected.expire_if_due(now);
                        prop_assert_eq!(&r, &expected);
                    } else if res.is_ok() && approve && !eligible_approvals.contains(&p.id().to_string()) {
                        eligible_approvals.push(p.id().to_string());
                    }
                }
            }
            prop_assert!(allowed_edge(before.state, r.state), "{:?} -> {:?}", before.state, r.state);
            if before.state == RequestState::Expired { prop_assert_eq!(r.state, RequestState::Expired); }
            if before.state == RequestState::Denied { prop_assert_eq!(r.state, RequestState::Denied); }
            if r.state == RequestState::Approved && before.state == RequestState::Pending {
                prop_assert!(eligible_approvals.len() >= quorum as usize,
                    "approved with {} distinct eligible approvals, quorum {quorum}", eligible_approvals.len());
                prop_assert!(r.reviews.iter().all(|rv| rv.decision == Decision::Approve));
            }
            // Every recorded review is by an eligible human, once each.
            for rv in &r.reviews {
                prop_assert!(rv.reviewer.0 != OWNER && rv.reviewer.0 != "outsider@x");
                prop_assert_eq!(r.reviews.iter().filter(|x| x.reviewer == rv.reviewer).count(), 1);
            }
            prop_assert!(r.approvals() <= quorum as usize);
            if r.reviews.iter().any(|rv| rv.decision == Decision::Deny) {
                prop_assert_eq!(r.state, RequestState::Denied);
            }
            prop_assert!(grants_used <= 1, "grant used {grants_used} times");
        }
    }
}

#[test]
fn deny_after_partial_approval_ends_the_request() {
    let people = cast();
    let mut r = request(2);
    let now = Timestamp(1);
    r.decide(
        &people[4],
        Decision::Approve,
        "",
        now,
        Duration::from_secs(1),
    )
    .unwrap();
    assert_eq!(r.state, RequestState::Pending);
    r.decide(
        &people[5],
        Decision::Deny,
        "no",
        now,
        Duration::from_secs(1),
    )
    .unwrap();
    assert_eq!(r.state, RequestState::Denied);
    assert_eq!(
        r.decide(
            &people[6],
            Decision::Approve,
            "",
            now,
            Duration::from_secs(1)
        ),
        Err(DecideError::NotPending(RequestState::Denied))
    );
}

#[test]
fn each_kind_of_ineligible_reviewer_gets_its_own_refusal() {
    let people = cast();
    let mut r = request(1);
    let now = Timestamp(1);
    let ttl = Duration::from_secs(1);
    assert_eq!(
        r.decide(&people[0], Decision::Approve, "", now, ttl),
        Err(DecideError::NotHuman)
    );
    assert_eq!(
        r.decide(&people[1], Decision::Approve, "", now, ttl),
        Err(DecideError::Owner)
    );
    assert_eq!(
        r.decide(&people[2], Decision::Approve, "", now, ttl),
        Err(DecideError::NotHuman)
    );
    assert!(matches!(
        r.decide(&people[3], Decision::Approve, "", now, ttl),
        Err(DecideError::NotApprover(_))
    ));
    // A human initiator cannot approve its own request even when it is an approver.
    let mut own = request(1);
    own.action.principal = people[4].clone();
    assert_eq!(
        own.decide(&people[4], Decision::Approve, "", now, ttl),
        Err(DecideError::Initiator)
    );
    assert_eq!(r.state, RequestState::Pending);
    assert!(r.reviews.is_empty());
}

#[test]
fn grant_expires_unused_and_is_single_use() {
    let people = cast();
    let mut r = request(1);
    r.decide(
        &people[7],
        Decision::Approve,
        "",
        Timestamp(10),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(r.state, RequestState::Approved);
    let mut late = r.clone();
    assert_eq!(
        late.use_grant(Timestamp(5_010), false),
        GrantUse::Unavailable
    );
    assert_eq!(late.state, RequestState::Expired);
    assert_eq!(r.use_grant(Timestamp(5_009), false), GrantUse::Used);
    assert_eq!(r.use_grant(Timestamp(5_009), false), GrantUse::Unavailable);
    assert_eq!(r.state, RequestState::Executed);
}

#[test]
fn case_does_not_disguise_the_owner_the_initiator_or_a_repeat_vote() {
    let ttl = Duration::from_secs(1);
    let now = Timestamp(1);
    let mut r = request(2);
    assert_eq!(
        r.decide(&human("OWNER@X", &["dba"]), Decision::Approve, "", now, ttl),
        Err(DecideError::Owner)
    );
    r.decide(&human("a@x", &["dba"]), Decision::Approve, "", now, ttl)
        .unwrap();
    assert_eq!(
        r.decide(&human("A@X", &["dba"]), Decision::Approve, "", now, ttl),
        Err(DecideError::AlreadyReviewed)
    );
    assert_eq!(r.state, RequestState::Pending);
    let mut own = request(1);
    own.action.principal = human("Lead@X", &["dba"]);
    assert_eq!(
        own.decide(&human("lead@x", &["dba"]), Decision::Approve, "", now, ttl),
        Err(DecideError::Initiator)
    );
}

#[test]
fn who_may_decide_is_checked_before_the_state() {
    let people = cast();
    let mut r = request(1);
    let now = Timestamp(1);
    let ttl = Duration::from_secs(1);
    r.decide(&people[4], Decision::Deny, "no", now, ttl)
        .unwrap();
    // An agent probing a decided request learns only that it may not decide.
    assert_eq!(
        r.decide(&people[2], Decision::Approve, "", now, ttl),
        Err(DecideError::NotHuman)
    );
    assert_eq!(
        r.decide(&people[5], Decision::Approve, "", now, ttl),
        Err(DecideError::NotPending(RequestState::Denied))
    );
}

#[test]
fn only_the_initiator_withdraws_and_only_while_pending() {
    let cast = cast();
    for other in &cast[1..] {
        let mut r = request(1);
        assert!(!r.withdraw(other, Timestamp(1)), "{other:?} withdrew");
        assert_eq!(r.state, RequestState::Pending);
    }
    let mut r = request(1);
    assert!(r.withdraw(&cast[0], Timestamp(1)));
    assert_eq!(r.state, RequestState::Expired);
    // Nothing can be approved after it.
    assert!(
        r.decide(
            &cast[4],
            Decision::Approve,
            "",
            Timestamp(2),
            Duration::from_secs(60)
        )
        .is_err()
    );
    // An approved request is no longer the initiator's to withdraw: its
    // grant expires or is used.
    let mut r = request(1);
    r.decide(
        &cast[4],
        Decision::Approve,
        "",
        Timestamp(1),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(!r.withdraw(&cast[0], Timestamp(2)));
    assert_eq!(r.state, RequestState::Approved);
}

#[test]
fn the_human_an_agent_acts_for_never_decides_its_requests() {
    let mut r = request(1);
    if let Principal::Agent { on_behalf_of, .. } = &mut r.action.principal {
        *on_behalf_of = Some(HumanId::from("A@X"));
    }
    // Case-insensitively the same person as a@x, an eligible dba.
    let delegator = &cast()[4];
    assert_eq!(
        r.decide(
            delegator,
            Decision::Approve,
            "",
            Timestamp(1),
            Duration::from_secs(60)
        ),
        Err(DecideError::Delegator)
    );
    assert_eq!(r.state, RequestState::Pending);
    r.decide(
        &cast()[5],
        Decision::Approve,
        "",
        Timestamp(1),
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(r.state, RequestState::Approved);
}

#[test]
fn acting_for_someone_else_is_another_fingerprint() {
    let plain = request(1);
    let mut delegated = request(1);
    if let Principal::Agent { on_behalf_of, .. } = &mut delegated.action.principal {
        *on_behalf_of = Some(HumanId::from("a@x"));
    }
    let route = plain.route.clone();
    let fp = |a: &Action| Fingerprint::of(a, "v", &["p".to_string()], &route);
    assert_ne!(fp(&plain.action), fp(&delegated.action));
}
