//! Calls of a 2026-07-28 client that span several requests. That revision
//! has no server-to-client requests and no long-lived session: a server
//! that needs something answers `input_required` with a `requestState`,
//! and the client repeats the identical request with it (and with its
//! `inputResponses`). gavel does this in two cases:
//!
//! - the call waits for a human: the held call answers `input_required`
//!   instead of a refusal, and the repeated call is judged again (it
//!   finds its pending request, or spends the grant once);
//! - the upstream (speaking 2026-07-28 too) asked the client for input
//!   during an admitted call: the admission stays open here, and the
//!   client's next round is forwarded under it, never admitted anew (an
//!   approved call would otherwise need a second approval to hear the
//!   client's answer).
//!
//! - a read or prompt of a 2026-07-28 upstream asked for input: each round
//!   is judged again as a read, and the round only carries the upstream's
//!   questions and state.
//!
//! The `requestState` gavel hands out is an unguessable handle, never the
//! state itself: what it stands for stays in this process, bound to the
//! principal, the upstream, the target (tool, prompt or resource) and a
//! digest of the exact admitted arguments, and is spent by its first use.
//! The upstream's own `requestState` never reaches the client, so the
//! client cannot swap it for another one. The upstream's questions are
//! kept too ([`Asked`]): only answers to them reach the upstream, each
//! checked for its kind and recorded, and roots are always gavel's own.

// Sampling is deprecated in the 2026-07-28 revision, yet its answers are
// what an upstream may ask for there.
#![allow(deprecated)]

use gavel_core::{Outcome, Permitted, RequestId};
use rmcp::model::{CreateMessageResult, ElicitResult, InputRequests, InputResponses};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a call may span rounds, from its first: a client that keeps
/// answering does not keep an admission open for longer.
pub(crate) const ROUND_LIFETIME: Duration = Duration::from_secs(600);

/// Open rounds one principal may hold; the oldest ends first.
const PER_PRINCIPAL: usize = 32;

/// Open rounds of the whole gateway; the oldest ends first.
const IN_ALL: usize = 4_096;

/// Rounds of input one admitted call may take.
pub(crate) const MAX_INPUT_ROUNDS: u32 = 16;

/// The prefix of every handle gavel hands out, so a `requestState` that is
/// not one of gavel's is told apart from one that expired.
const HANDLE_PREFIX: &str = "gavel-round-";

/// What a call is waiting for between two of the client's requests.
pub(crate) enum Next {
    /// A human's decision on `request`; the next round is judged again.
    Approval { request: RequestId },
    /// The client's answers to the upstream's questions (`asked`); the
    /// next round is forwarded under `permitted`, with the upstream's own
    /// state. `round` counts the rounds so far.
    Input {
        permitted: Box<Permitted>,
        upstream_state: Option<String>,
        asked: Asked,
        round: u32,
    },
    /// The client's answers to a read's or prompt's questions; the next
    /// round is judged again.
    ReadInput {
        upstream_state: Option<String>,
        asked: Asked,
    },
}

/// The questions an upstream asked in one round: key → method.
#[derive(Debug, Default, Clone)]
pub(crate) struct Asked(BTreeMap<String, String>);

/// One answer for the upstream, and the line a record keeps of it.
pub(crate) struct Answered {
    pub method: String,
    pub summary: String,
}

impl Asked {
    /// Splits an upstream's questions: those for the client, which are
    /// relayed, and `roots/list`, which gavel answers itself from the
    /// configuration (a client's roots would widen what a filesystem
    /// server may touch). Remembers every question's key and method.
    pub(crate) fn split(requests: Option<InputRequests>) -> (Option<InputRequests>, Asked) {
        let Some(requests) = requests else {
            return (None, Asked::default());
        };
        let mut asked = BTreeMap::new();
        let mut relayed = InputRequests::new();
        for (key, request) in requests {
            let method = serde_json::to_value(&request)
                .ok()
                .and_then(|v| v.get("method").and_then(|m| m.as_str().map(str::to_owned)))
                .unwrap_or_default();
            if method != "roots/list" {
                relayed.insert(key.clone(), request);
            }
            asked.insert(key, method);
        }
        let relayed = (!relayed.is_empty()).then_some(relayed);
        (relayed, Asked(asked))
    }

    /// The answers the upstream gets: the client's answer to each question
    /// it was asked, if it is an answer of that kind, and the configured
    /// `roots` for each `roots/list`. Answers to questions that were not
    /// asked are dropped; an answer of the wrong kind is an error.
    pub(crate) fn answers(
        &self,
        from_client: Option<InputResponses>,
        roots: &[String],
    ) -> Result<(Option<InputResponses>, Vec<Answered>), String> {
        let mut from_client = from_client.unwrap_or_default();
        let mut answers = InputResponses::new();
        let mut lines = Vec::new();
        for (key, method) in &self.0 {
            if method == "roots/list" {
                let roots: Vec<_> = roots
                    .iter()
                    .map(|uri| serde_json::json!({ "uri": uri }))
                    .collect();
                lines.push(Answered {
                    method: method.clone(),
                    summary: format!(
                        "answered by gavel with the {} configured root(s), never the client's",
                        roots.len()
                    ),
                });
                answers.insert(key.clone(), serde_json::json!({ "roots": roots }));
                continue;
            }
            let Some(answer) = from_client.remove(key) else {
                continue;
            };
            // The upstream gets the answer as gavel read it, re-encoded:
            // fields an answer of that kind does not have (a `roots` list
            // smuggled into an elicitation result) do not reach it.
            let (summary, answer) = match method.as_str() {
                "elicitation/create" => {
                    let r: ElicitResult = serde_json::from_value(answer).map_err(|_| {
                        format!("inputResponses[{key:?}] is not an elicitation result")
                    })?;
                    (elicitation_answer(&r), serde_json::to_value(&r))
                }
                "sampling/createMessage" => {
                    let r: CreateMessageResult = serde_json::from_value(answer)
                        .map_err(|_| format!("inputResponses[{key:?}] is not a sampling result"))?;
                    (sampling_answer(&r), serde_json::to_value(&r))
                }
                other => {
                    return Err(format!(
                        "the upstream asked {other:?}, which gavel does not relay"
                    ));
                }
            };
            let answer = answer.map_err(|e| format!("inputResponses[{key:?}]: {e}"))?;
            lines.push(Answered {
                method: method.clone(),
                summary,
            });
            answers.insert(key.clone(), answer);
        }
        Ok(((!answers.is_empty()).then_some(answers), lines))
    }
}

/// How a client answered an elicitation, for a record: the action and
/// the form's field names, never their values (a form may ask for a
/// secret).
pub(crate) fn elicitation_answer(r: &ElicitResult) -> String {
    let fields = r
        .content
        .as_ref()
        .and_then(|c| c.as_object())
        .map(|c| c.keys().cloned().collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let action = serde_json::to_value(&r.action)
        .ok()
        .and_then(|a| a.as_str().map(str::to_owned))
        .unwrap_or_default();
    format!("the client answered {action} with fields [{fields}]")
}

/// How a client answered a sampling request, for a record: the model and
/// the length of the text, never the text.
pub(crate) fn sampling_answer(r: &CreateMessageResult) -> String {
    let text = serde_json::to_value(&r.message.content)
        .ok()
        .and_then(|c| c.get("text").and_then(|t| t.as_str().map(str::len)))
        .unwrap_or(0);
    format!(
        "the client answered with model {:?}, {text} characters of text",
        r.model
    )
}

/// A digest of arguments as admitted: what a later round must match.
pub(crate) fn digest(args: &serde_json::Value) -> [u8; 32] {
    Sha256::digest(args.to_string().as_bytes()).into()
}

/// One open round: who may continue it, and with what call.
pub(crate) struct Round {
    pub principal: String,
    pub upstream: String,
    /// What the call names: `tool:NAME`, `prompt:NAME`, `resource:URI`.
    pub target: String,
    /// [`digest`] of the arguments as admitted (after normalization): the
    /// next round must carry the same.
    args: [u8; 32],
    pub next: Next,
    /// When the call's first round began plus [`ROUND_LIFETIME`]; later
    /// rounds keep it.
    pub expires: Instant,
}

impl Round {
    /// A round of a call whose first round began now, or that ends at
    /// `expires` (a later round of the same call).
    pub(crate) fn new(
        principal: String,
        upstream: String,
        target: String,
        args: &serde_json::Value,
        next: Next,
        expires: Option<Instant>,
    ) -> Round {
        Round {
            principal,
            upstream,
            target,
            args: digest(args),
            next,
            expires: expires.unwrap_or_else(|| Instant::now() + ROUND_LIFETIME),
        }
    }

    /// Ends a round nobody continued: an admitted call that was forwarded
    /// and then abandoned is recorded as such.
    pub(crate) fn abandon(self, why: &str) {
        if let Next::Input { permitted, .. } = self.next {
            (*permitted).finish(Outcome::Failed {
                detail: format!(
                    "forwarded; the upstream asked the client for input and {why}, so the call never completed"
                ),
            });
        }
    }
}

/// Why a `requestState` does not continue a call.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not one of gavel's handles.
    Foreign,
    /// Already used, expired, or never handed out here.
    Unknown,
    /// Handed out for another principal, tool or arguments (and now spent).
    Mismatch,
}

impl Refused {
    pub(crate) fn message(&self) -> &'static str {
        match self {
            Refused::Foreign => {
                "requestState was not issued by this gateway; repeat the call without it"
            }
            Refused::Unknown => {
                "requestState is unknown, expired or already used; repeat the call without it"
            }
            Refused::Mismatch => {
                "requestState belongs to another call (principal, tool or arguments differ); nothing was run"
            }
        }
    }
}

/// The open rounds of this gateway.
#[derive(Default)]
pub(crate) struct Rounds {
    open: Mutex<HashMap<String, Round>>,
}

impl Rounds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Round>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `round` until the client continues it; returns the handle the
    /// client echoes as `requestState`.
    pub(crate) fn park(&self, round: Round) -> String {
        let handle = format!(
            "{HANDLE_PREFIX}{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let mut ended = Vec::new();
        {
            let mut open = self.lock();
            for (limit, mine_only) in [(PER_PRINCIPAL, true), (IN_ALL, false)] {
                let mut held: Vec<(Instant, String)> = open
                    .iter()
                    .filter(|(_, r)| !mine_only || r.principal == round.principal)
                    .map(|(h, r)| (r.expires, h.clone()))
                    .collect();
                if held.len() >= limit {
                    held.sort();
                    for (_, h) in held.iter().take(held.len() + 1 - limit) {
                        if let Some(r) = open.remove(h) {
                            ended.push(r);
                        }
                    }
                }
            }
            open.insert(handle.clone(), round);
        }
        for r in ended {
            r.abandon("the client opened too many other rounds since");
        }
        handle
    }

    /// Takes the round `handle` stands for, for `principal`, `upstream`,
    /// `target` and exactly `args`. Spent either way: a handle is good for
    /// one try.
    pub(crate) fn take(
        &self,
        handle: &str,
        principal: &str,
        upstream: &str,
        target: &str,
        args: &serde_json::Value,
    ) -> Result<Round, Refused> {
        if !handle.starts_with(HANDLE_PREFIX) {
            return Err(Refused::Foreign);
        }
        let round = self.lock().remove(handle).ok_or(Refused::Unknown)?;
        if round.expires <= Instant::now() {
            round.abandon("did not come back in time");
            return Err(Refused::Unknown);
        }
        if round.principal != principal
            || round.upstream != upstream
            || round.target != target
            || round.args != digest(args)
        {
            round.abandon("the next round was for another call");
            return Err(Refused::Mismatch);
        }
        Ok(round)
    }

    /// Ends the rounds whose client never came back.
    pub(crate) fn prune(&self) {
        let now = Instant::now();
        let expired: Vec<Round> = {
            let mut open = self.lock();
            let handles: Vec<String> = open
                .iter()
                .filter(|(_, r)| r.expires <= now)
                .map(|(h, _)| h.clone())
                .collect();
            handles.iter().filter_map(|h| open.remove(h)).collect()
        };
        for r in expired {
            r.abandon("did not come back in time");
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn questions(json: serde_json::Value) -> InputRequests {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn roots_are_answered_from_the_configuration_and_unasked_answers_dropped() {
        let (relayed, asked) = Asked::split(Some(questions(serde_json::json!({
            "r": {"method": "roots/list"},
            "e": {"method": "elicitation/create", "params": {"message": "name?",
                  "requestedSchema": {"type": "object", "properties": {}}}},
        }))));
        let relayed = relayed.unwrap();
        assert_eq!(relayed.keys().collect::<Vec<_>>(), ["e"]);
        let client = serde_json::from_value(serde_json::json!({
            "r": {"roots": [{"uri": "file:///"}]},
            "e": {"action": "accept", "content": {"password": "hunter2"}},
            "x": {"anything": true},
        }))
        .unwrap();
        let (answers, lines) = asked
            .answers(Some(client), &["file:///srv".into()])
            .unwrap();
        let answers = answers.unwrap();
        assert_eq!(
            answers["r"],
            serde_json::json!({"roots": [{"uri": "file:///srv"}]})
        );
        assert!(answers.contains_key("e") && !answers.contains_key("x"));
        let text: Vec<_> = lines.iter().map(|l| l.summary.clone()).collect();
        assert!(text.iter().any(|l| l.contains("[password]")), "{text:?}");
        assert!(text.iter().all(|l| !l.contains("hunter2")), "{text:?}");
        // Fields an answer of its kind does not have do not reach the
        // upstream.
        let smuggled = serde_json::from_value(serde_json::json!({
            "e": {"action": "accept", "roots": [{"uri": "file:///"}]},
        }))
        .unwrap();
        let (answers, _) = asked.answers(Some(smuggled), &[]).unwrap();
        assert!(answers.unwrap()["e"].get("roots").is_none());
        // An answer of the wrong kind is refused.
        let wrong = serde_json::from_value(serde_json::json!({"e": {"roots": []}})).unwrap();
        assert!(asked.answers(Some(wrong), &[]).is_err());
    }

    fn round(principal: &str, args: serde_json::Value) -> Round {
        Round::new(
            principal.into(),
            "up".into(),
            "tool".into(),
            &args,
            Next::Approval {
                request: RequestId("r".into()),
            },
            None,
        )
    }

    #[test]
    fn a_handle_continues_its_own_call_once() {
        let rounds = Rounds::default();
        let args = serde_json::json!({"a": 1});
        let h = rounds.park(round("agent:a", args.clone()));
        assert!(rounds.take(&h, "agent:a", "up", "tool", &args).is_ok());
        assert_eq!(
            rounds.take(&h, "agent:a", "up", "tool", &args).err(),
            Some(Refused::Unknown)
        );
    }

    #[test]
    fn another_principal_tool_or_arguments_spend_the_handle_and_get_nothing() {
        let rounds = Rounds::default();
        let args = serde_json::json!({"a": 1});
        for (p, t, a) in [
            ("agent:b", "tool", args.clone()),
            ("agent:a", "other", args.clone()),
            ("agent:a", "tool", serde_json::json!({"a": 2})),
        ] {
            let h = rounds.park(round("agent:a", args.clone()));
            assert_eq!(
                rounds.take(&h, p, "up", t, &a).err(),
                Some(Refused::Mismatch)
            );
            assert_eq!(
                rounds.take(&h, "agent:a", "up", "tool", &args).err(),
                Some(Refused::Unknown)
            );
        }
        assert_eq!(
            rounds.take("made-up", "agent:a", "up", "tool", &args).err(),
            Some(Refused::Foreign)
        );
    }

    #[test]
    fn one_principal_holds_a_bounded_number_of_rounds() {
        let rounds = Rounds::default();
        let first = rounds.park(round("agent:a", serde_json::json!({})));
        for _ in 0..PER_PRINCIPAL {
            rounds.park(round("agent:a", serde_json::json!({})));
        }
        rounds.park(round("agent:b", serde_json::json!({})));
        assert_eq!(rounds.len(), PER_PRINCIPAL + 1);
        for i in 0..IN_ALL {
            rounds.park(round(&format!("agent:{i}"), serde_json::json!({})));
        }
        assert_eq!(rounds.len(), IN_ALL);
        assert_eq!(
            rounds
                .take(&first, "agent:a", "up", "tool", &serde_json::json!({}))
                .err(),
            Some(Refused::Unknown)
        );
    }
}
