//! Data-driven checks of the SPEC §3 decision order over real Cedar.

use gavel_core::*;
use gavel_policy::{decide, decide_unindexed, load_sources};
use std::path::PathBuf;
use std::time::Duration;

const POLICIES: &str = r#"
@id("reads-allowed")
permit(principal, action == Action::"sql.read", resource);

@id("no-unknown-sql")
forbid(principal, action == Action::"sql.unknown", resource);

@id("prod-ddl-needs-two-dbas")
@approval("group:dba")
@quorum("2")
@timeout("30m")
permit(principal, action in [Action::"sql.ddl", Action::"sql.dcl"], resource)
when { resource.hasTag("env") && resource.getTag("env") == "prod" };

@id("dev-ddl-free")
permit(principal in Group::"dev", action == Action::"sql.ddl", resource)
when { resource.hasTag("env") && resource.getTag("env") == "dev" };

@id("writes-by-owner-approval")
@approval("user:lead@x")
@timeout("10m")
permit(principal is Agent, action == Action::"sql.write", resource);

@id("writes-also-security")
@approval("group:security")
@timeout("5m")
permit(principal, action == Action::"sql.write", resource == Resource::"prod-db");

@id("no-writes-to-audit-table")
forbid(principal, action == Action::"sql.write", resource)
when { context.tables.contains("audit_log") };

@id("agents-of-bob-no-exec")
forbid(principal is Agent, action == Action::"exec.run", resource)
when { principal.owner == User::"bob@x" };

@id("exec-ls")
permit(principal, action == Action::"exec.run", resource)
when { context.command like "ls*" };

@id("mcp-echo")
permit(principal, action == Action::"mcp.call", resource)
when { context.tool like "*echo" };

@id("http-get")
permit(principal, action == Action::"http.read", resource)
when { context.method == "GET" && context.path like "/status*" };
"#;

fn agent(owner: &str, groups: &[&str]) -> Principal {
    Principal::Agent {
        id: "bot".into(),
        owner: HumanId::from(owner),
        groups: groups.iter().map(|s| s.to_string()).collect(),
        on_behalf_of: None,
    }
}

fn action(
    p: Principal,
    class: &str,
    resource: &str,
    env: &str,
    op: &str,
    details: serde_json::Value,
) -> Action {
    Action {
        principal: p,
        resource: Resource {
            name: resource.into(),
            kind: "postgres".into(),
            tags: if env.is_empty() {
                Default::default()
            } else {
                [("env".to_string(), env.to_string())].into()
            },
        },
        class: class.parse().unwrap(),
        operation: op.into(),
        details,
        intent: String::new(),
        data_context: serde_json::Value::Null,
        settings: Default::default(),
        surface: "test".into(),
        source: None,
    }
}

fn summary(d: &PolicyDecision) -> String {
    match &d.verdict {
        PolicyVerdict::Allow => format!("allow {}", d.policies.join(",")),
        PolicyVerdict::Deny => format!("deny {}", d.policies.join(",")),
        PolicyVerdict::NeedsApproval {
            approvers,
            quorum,
            timeout,
        } => format!(
            "approval {} by {} quorum {} timeout {}",
            d.policies.join(","),
            approvers
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join("+"),
            quorum,
            timeout.map(humantime_secs).unwrap_or_default()
        ),
    }
}

fn humantime_secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

#[test]
fn decision_table() {
    let bundle = load_sources(&[(PathBuf::from("t.cedar"), POLICIES.into())]).unwrap();
    use serde_json::json as j;
    let cases: Vec<(Action, &str)> = vec![
        (
            action(
                agent("a@x", &[]),
                "sql.read",
                "prod-db",
                "prod",
                "SELECT 1",
                j!({}),
            ),
            "allow reads-allowed",
        ),
        (
            action(
                agent("a@x", &[]),
                "sql.unknown",
                "prod-db",
                "prod",
                "???",
                j!({}),
            ),
            "deny no-unknown-sql",
        ),
        (
            action(
                agent("a@x", &[]),
                "sql.ddl",
                "prod-db",
                "prod",
                "DROP TABLE t",
                j!({}),
            ),
            "approval prod-ddl-needs-two-dbas by group:dba quorum 2 timeout 1800s",
        ),
        // An approval rule wins over a plain permit that also matches.
        (
            action(
                agent("a@x", &["dev"]),
                "sql.ddl",
                "db",
                "prod",
                "DROP TABLE t",
                j!({}),
            ),
            "approval prod-ddl-needs-two-dbas by group:dba quorum 2 timeout 1800s",
        ),
        (
            action(
                agent("a@x", &["dev"]),
                "sql.ddl",
                "db",
                "dev",
                "DROP TABLE t",
                j!({}),
            ),
            "allow dev-ddl-free",
        ),
        (
            action(
                agent("a@x", &[]),
                "sql.ddl",
                "db",
                "dev",
                "DROP TABLE t",
                j!({}),
            ),
            "deny ",
        ),
        (
            action(
                agent("a@x", &[]),
                "sql.ddl",
                "db",
                "",
                "DROP TABLE t",
                j!({}),
            ),
            "deny ",
        ),
        // Approver sets unite, quorum is the largest, timeout the shortest.
        (
            action(
                agent("a@x", &[]),
                "sql.write",
                "prod-db",
                "prod",
                "DELETE FROM t",
                j!({"tables": ["t"]}),
            ),
            "approval writes-also-security,writes-by-owner-approval by group:security+user:lead@x quorum 1 timeout 300s",
        ),
        // A forbid beats approval rules.
        (
            action(
                agent("a@x", &[]),
                "sql.write",
                "prod-db",
                "prod",
                "DELETE FROM audit_log",
                j!({"tables": ["audit_log"]}),
            ),
            "deny no-writes-to-audit-table",
        ),
        (
            action(agent("a@x", &[]), "exec.run", "host", "", "ls -la", j!({})),
            "allow exec-ls",
        ),
        (
            action(
                agent("bob@x", &[]),
                "exec.run",
                "host",
                "",
                "ls -la",
                j!({}),
            ),
            "deny agents-of-bob-no-exec",
        ),
        (
            action(
                agent("a@x", &[]),
                "exec.run",
                "host",
                "",
                "rm -rf /",
                j!({}),
            ),
            "deny ",
        ),
        (
            action(
                agent("a@x", &[]),
                "mcp.call",
                "tools",
                "",
                "everything__echo",
                j!({}),
            ),
            "allow mcp-echo",
        ),
        (
            action(
                agent("a@x", &[]),
                "mcp.call",
                "tools",
                "",
                "x",
                j!({"tool": "srv_echo"}),
            ),
            "allow mcp-echo",
        ),
        (
            action(
                agent("a@x", &[]),
                "http.read",
                "api",
                "",
                "GET /status/db",
                j!({}),
            ),
            "allow http-get",
        ),
        (
            action(
                agent("a@x", &[]),
                "http.read",
                "api",
                "",
                "GET /admin",
                j!({}),
            ),
            "deny ",
        ),
        // Details of the wrong type fail closed.
        (
            action(
                agent("a@x", &[]),
                "sql.read",
                "prod-db",
                "prod",
                "SELECT 1",
                j!({"tables": "t"}),
            ),
            "deny ",
        ),
        (
            action(agent("a@x", &[]), "http.read", "api", "", "GET", j!({})),
            "deny ",
        ),
        // Humans are principals too.
        (
            action(
                Principal::Human(Human {
                    id: "h@x".into(),
                    groups: vec!["dev".into()],
                }),
                "sql.ddl",
                "db",
                "dev",
                "CREATE TABLE t()",
                j!({}),
            ),
            "allow dev-ddl-free",
        ),
    ];
    let mut failures = Vec::new();
    for (a, expected) in &cases {
        let got = summary(&decide(&bundle, a));
        if got != *expected {
            failures.push(format!(
                "{} {} {:?}: expected {expected:?}, got {got:?}",
                a.class, a.resource.name, a.operation
            ));
        }
        assert_eq!(
            summary(&decide_unindexed(&bundle, a)),
            got,
            "index changed the answer for {a:?}"
        );
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn default_deny_names_no_policy_and_explains() {
    let bundle = load_sources(&[]).unwrap();
    let d = decide(
        &bundle,
        &action(
            agent("a@x", &[]),
            "sql.read",
            "db",
            "",
            "SELECT 1",
            serde_json::json!({}),
        ),
    );
    assert_eq!(d.verdict, PolicyVerdict::Deny);
    assert!(d.policies.is_empty());
    assert!(d.reason.contains("default deny"), "{}", d.reason);
}

#[test]
fn evaluation_errors_fail_closed() {
    // Strict validation prevents most runtime errors; arithmetic overflow is
    // one it cannot, and it must deny even though a permit also matches.
    let text = r#"
@id("allow-all") permit(principal, action, resource);
@id("overflow-forbid") forbid(principal, action == Action::"sql.read", resource)
  when { 9223372036854775807 + 1 > 0 };
"#
    .to_owned();
    let bundle = load_sources(&[(PathBuf::from("e.cedar"), text)]).unwrap();
    let d = decide(
        &bundle,
        &action(
            agent("a@x", &[]),
            "sql.read",
            "db",
            "",
            "SELECT 1",
            serde_json::json!({}),
        ),
    );
    assert_eq!(d.verdict, PolicyVerdict::Deny, "{d:?}");
    assert_eq!(d.policies, vec!["overflow-forbid".to_string()]);
    assert!(d.reason.contains("fail closed"), "{}", d.reason);
}

#[test]
fn index_gives_the_same_answer_as_the_whole_set() {
    // Many policies pinned to resources, plus unpinned ones: every answer
    // through the index must equal the unindexed answer.
    let mut text = String::new();
    for i in 0..60 {
        let class = ActionClass::ALL[i % ActionClass::ALL.len()];
        match i % 4 {
            0 => text.push_str(&format!("@id(\"p{i}\") permit(principal, action == Action::\"{class}\", resource == Resource::\"r{}\");\n", i % 7)),
            1 => text.push_str(&format!("@id(\"p{i}\") forbid(principal, action in [Action::\"{class}\", Action::\"sql.read\"], resource in Resource::\"r{}\");\n", i % 5)),
            2 => text.push_str(&format!("@id(\"p{i}\") @approval(\"group:g{i}\") permit(principal, action, resource is Resource) when {{ resource.name == \"r{}\" }};\n", i % 6)),
            _ => text.push_str(&format!("@id(\"p{i}\") permit(principal in Group::\"g{}\", action == Action::\"{class}\", resource);\n", i % 3)),
        }
    }
    let bundle = load_sources(&[(PathBuf::from("i.cedar"), text)]).unwrap();
    for class in ActionClass::ALL {
        for r in 0..9 {
            for g in 0..4 {
                let mut a = action(
                    agent("a@x", &[&format!("g{g}")]),
                    class.as_str(),
                    &format!("r{r}"),
                    "",
                    "GET /x",
                    serde_json::json!({}),
                );
                a.class = class;
                let indexed = decide(&bundle, &a);
                let whole = decide_unindexed(&bundle, &a);
                assert_eq!(summary(&indexed), summary(&whole), "{class} r{r} g{g}");
            }
        }
    }
}

#[test]
fn mcp_arguments_reach_policy_as_context_args() {
    // The issue's example: write_file outside /srv/data is forbidden,
    // inside it needs approval.
    let text = r#"
@id("fs-reads") permit(principal, action == Action::"mcp.call", resource == Resource::"fs")
  when { context.tool == "read_file" };
@id("fs-writes-need-approval") @approval("group:ops")
permit(principal, action == Action::"mcp.call", resource == Resource::"fs")
  when { context.tool == "write_file" };
@id("fs-writes-only-in-srv-data")
forbid(principal, action == Action::"mcp.call", resource == Resource::"fs")
  when { context.tool == "write_file" &&
         !(context.args.hasTag("path") && context.args.getTag("path") like "/srv/data/*") };
@id("no-recursive") forbid(principal, action == Action::"mcp.call", resource)
  when { context.args.hasTag("recursive") && context.args.getTag("recursive") == "true" };
"#
    .to_owned();
    let bundle = load_sources(&[(PathBuf::from("m.cedar"), text)]).unwrap();
    let call = |tool: &str, args: serde_json::Value| {
        let mut a = action(
            agent("a@x", &[]),
            "mcp.call",
            "fs",
            "",
            tool,
            serde_json::json!({ "args": args }),
        );
        a.resource.kind = "mcp".into();
        summary(&decide(&bundle, &a))
    };
    use serde_json::json as j;
    assert_eq!(
        call(
            "write_file",
            j!({"path": "/srv/data/a.txt", "content": "x"})
        ),
        "approval fs-writes-need-approval by group:ops quorum 1 timeout "
    );
    assert_eq!(
        call("write_file", j!({"path": "/etc/passwd", "content": "x"})),
        "deny fs-writes-only-in-srv-data"
    );
    assert_eq!(
        call("write_file", j!({"content": "x"})),
        "deny fs-writes-only-in-srv-data"
    );
    // A path that only starts like the allowed directory.
    assert_eq!(
        call("write_file", j!({"path": "/srv/database/x"})),
        "deny fs-writes-only-in-srv-data"
    );
    assert_eq!(
        call("read_file", j!({"path": "/etc/hosts"})),
        "allow fs-reads"
    );
    // Non-string values are their JSON text.
    assert_eq!(
        call("read_file", j!({"path": "/x", "recursive": true})),
        "deny no-recursive"
    );
    assert_eq!(call("read_file", j!({})), "allow fs-reads");
    // Arguments that are not an object fail closed.
    let mut a = action(
        agent("a@x", &[]),
        "mcp.call",
        "fs",
        "",
        "read_file",
        j!({ "args": [1, 2] }),
    );
    a.resource.kind = "mcp".into();
    assert_eq!(decide(&bundle, &a).verdict, PolicyVerdict::Deny);
}
