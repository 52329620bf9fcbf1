//! The extended protocol: messages are queued to the next Flush or Sync,
//! every Execute in the batch is admitted, and then the whole batch is
//! forwarded, or none of it.

use crate::classify::NoNames;
use crate::names::{FIRST_USER_OID, Portal, Prepared, check_protocol_name};
use crate::session::{Discard, Session, TableOp};
use crate::surface::Classified;
use crate::to_server::Passive;
use crate::wire::{self, WireError};
use bytes::Bytes;
use gavel_core::{Permitted, Refusal};
use pgwire::messages::PgWireFrontendMessage;
use std::sync::Arc;

/// Each parameter's format code, from Bind's list (empty: all text; one:
/// all the same).
fn param_formats(count: usize, formats: &[i16]) -> Vec<i16> {
    (0..count)
        .map(|i| match formats {
            [] => 0,
            [one] => *one,
            many => many.get(i).copied().unwrap_or(0),
        })
        .collect()
}

fn param_values(params: &[Option<Bytes>], formats: &[i16]) -> Vec<serde_json::Value> {
    params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let binary = match formats {
                [] => false,
                [one] => *one == 1,
                many => many.get(i) == Some(&1),
            };
            match p {
                None => serde_json::Value::Null,
                Some(b) if !binary => match std::str::from_utf8(b) {
                    Ok(s) => serde_json::Value::String(s.to_owned()),
                    Err(_) => serde_json::Value::String(format!("\\x{}", hex::encode(b))),
                },
                Some(b) => serde_json::Value::String(format!("\\x{}", hex::encode(b))),
            }
        })
        .collect()
}

/// Every statement and portal name a message carries, checked against what
/// the server keeps whole.
fn check_names(message: &PgWireFrontendMessage) -> Result<(), String> {
    let name = |o: &Option<String>| o.clone().unwrap_or_default();
    match message {
        PgWireFrontendMessage::Parse(p) => check_protocol_name("statement", &name(&p.name)),
        PgWireFrontendMessage::Bind(b) => {
            check_protocol_name("portal", &name(&b.portal_name))?;
            check_protocol_name("statement", &name(&b.statement_name))
        }
        PgWireFrontendMessage::Describe(d) => {
            check_protocol_name("statement or portal", &name(&d.name))
        }
        PgWireFrontendMessage::Close(c) => {
            check_protocol_name("statement or portal", &name(&c.name))
        }
        PgWireFrontendMessage::Execute(e) => check_protocol_name("portal", &name(&e.name)),
        _ => Ok(()),
    }
}

/// What to answer for a batch that is not forwarded.
enum Refused {
    /// The gate refused a statement.
    Gate(Refusal, Arc<Classified>),
    /// The batch itself is unacceptable (a name the server would
    /// truncate).
    Batch { code: &'static str, message: String },
}

/// What a batch has done before the Execute being judged.
#[derive(Clone, Copy)]
struct BatchSoFar<'a> {
    statements: &'a [(String, Option<Arc<Prepared>>)],
    portals: &'a [(String, Option<Portal>)],
    changed_settings: &'a [String],
    code_created_by: Option<&'a str>,
}

impl Session {
    /// Classifies and admits what running `portal` (named `name`) runs,
    /// seen through the batch's own changes. `code_created_by` is an
    /// earlier Execute of the batch that may create code gavel has not read.
    async fn admit_portal(
        &mut self,
        portal: Option<Portal>,
        name: &str,
        batch: BatchSoFar<'_>,
    ) -> (Arc<Classified>, Arc<str>, Result<Permitted, Refusal>) {
        let BatchSoFar {
            statements,
            portals,
            changed_settings,
            code_created_by,
        } = batch;
        let (mut classified, text, stmt_intent, params) = match portal
            .as_ref()
            .and_then(|p| p.statement.as_ref().map(|s| (s, p)))
        {
            Some((s, portal)) => (
                s.classified.clone(),
                s.text.clone(),
                s.intent.clone(),
                Some(portal.clone()),
            ),
            // Unknown to gavel: the server will refuse it too, but it is
            // not forwarded on faith.
            None => (
                Arc::new(Classified::unknown(format!(
                    "Execute of portal {name:?}, which gavel cannot vouch for"
                ))),
                Arc::from(format!("<portal {name:?}>").as_str()),
                None,
                None,
            ),
        };
        // EXECUTE, FETCH and MOVE name other statements and portals: judged
        // against the tables as they are now, this batch's own changes
        // included. So is a statement parsed before the server's functions
        // last changed.
        if classified.facts().is_some_and(|f| f.uses_names())
            || self.has_own_objects()
            || (classified.facts().is_some()
                && classified.generation != self.surface.classifier.generation())
        {
            classified = self.classify_fresh(&text, statements, portals).await;
        }
        // What an earlier Execute of this batch created is not in any
        // catalog gavel can read before the batch runs.
        if let Some(earlier) = code_created_by
            && classified.facts().is_none_or(|f| f.evaluates())
        {
            classified = Arc::new(Classified::unknown(format!(
                "an earlier statement of this pipeline ({}) may create code gavel has not read yet; send what follows it after a Sync",
                crate::session::truncate(earlier.trim(), 80)
            )));
        }
        if let Some(intent) = classified.facts().and_then(|f| f.intent_setting()) {
            self.intent = intent;
        }
        let intent = stmt_intent.unwrap_or_else(|| self.intent.clone());
        let has_params = params.as_ref().is_some_and(|p| !p.params.is_empty());
        let action = self.action(&classified, &text, intent, params.as_ref());
        let admission = self
            .admit(action, &classified, &text, has_params, changed_settings)
            .await;
        (classified, text, admission)
    }

    /// Decides every Execute of the queued extended-protocol messages, then
    /// forwards them all, or none. Returns whether the session goes on.
    pub(crate) async fn run_batch(&mut self, sync: bool) -> Result<bool, WireError> {
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        self.settle().await?;
        if !self.credential_valid().await? {
            return Ok(false);
        }
        self.surface.ensure_catalog().await;
        let mut messages = Vec::with_capacity(batch.len());
        for frame in &batch {
            match wire::decode_frontend(frame) {
                Ok(m) => messages.push(m),
                Err(e) => return Err(self.protocol_error(e)),
            }
        }
        let refused_names = messages.iter().find_map(|m| check_names(m).err());
        // Names this batch takes from the session rather than defining
        // them itself: if the session's tables may be stale, ask the
        // server first.
        if refused_names.is_none() && (self.names.statements_stale || self.names.portals_stale) {
            let mut parsed: Vec<String> = Vec::new();
            let mut bound: Vec<String> = Vec::new();
            let mut needs = false;
            for m in &messages {
                match m {
                    PgWireFrontendMessage::Parse(p) => {
                        parsed.push(p.name.clone().unwrap_or_default())
                    }
                    PgWireFrontendMessage::Bind(b) => {
                        let s = b.statement_name.clone().unwrap_or_default();
                        needs |=
                            !s.is_empty() && !parsed.contains(&s) && self.names.statements_stale;
                        bound.push(b.portal_name.clone().unwrap_or_default());
                    }
                    PgWireFrontendMessage::Execute(e) => {
                        let p = e.name.clone().unwrap_or_default();
                        needs |= !p.is_empty() && !bound.contains(&p) && self.names.portals_stale;
                    }
                    _ => {}
                }
            }
            if needs {
                self.refresh_names().await;
            }
        }
        let mut ops: Vec<TableOp> = Vec::new();
        let mut statements: Vec<(String, Option<Arc<Prepared>>)> = Vec::new();
        let mut portals: Vec<(String, Option<Portal>)> = Vec::new();
        // The admitted Executes, by position in the batch, with the text
        // each was admitted for.
        let mut admitted: Vec<(usize, Arc<str>, Permitted)> = Vec::new();
        let mut changes_statements = false;
        let mut changes_portals = false;
        let mut changed_settings: Vec<String> = Vec::new();
        let mut runs_unseen_code = false;
        let mut code_created_by: Option<Arc<str>> = None;
        // Every Bind, and whether an Execute of its portal follows in this
        // batch: binding converts the parameters (a user type's input
        // function, a domain's CHECK), so a Bind whose portal is not run
        // here is admitted as its statement.
        let mut binds: Vec<(usize, String, Portal, bool)> = Vec::new();
        let mut bound_only: Vec<Permitted> = Vec::new();
        let mut refused = refused_names.map(|message| Refused::Batch {
            code: "42622",
            message: format!("gavel: {message}"),
        });
        for (index, message) in messages.into_iter().enumerate() {
            if refused.is_some() {
                break;
            }
            match message {
                PgWireFrontendMessage::Parse(p) => {
                    // Judged at Execute; a text that names other statements
                    // (EXECUTE, FETCH) is judged again then, against the
                    // tables as they are by that time.
                    let mut classified = self.surface.classify(&p.query, &NoNames);
                    if let Some(oid) = p.type_oids.iter().find(|o| **o >= FIRST_USER_OID) {
                        // Binding a parameter of a user-defined type runs its
                        // input function (or a domain's CHECK).
                        classified = Arc::new(Classified::unknown(format!(
                            "parameter type {oid} is not built in: binding runs its input function or a domain's CHECK"
                        )));
                    }
                    let intent = classified.facts().and_then(|f| f.intent.clone());
                    let prepared = Arc::new(Prepared {
                        text: Arc::from(p.query.as_str()),
                        param_types: Arc::new(p.type_oids.clone()),
                        source: None,
                        classified,
                        intent,
                    });
                    let name = p.name.unwrap_or_default();
                    ops.push(TableOp::Statement(name.clone(), Some(prepared.clone())));
                    statements.push((name, Some(prepared)));
                }
                PgWireFrontendMessage::Bind(b) => {
                    let name = b.statement_name.unwrap_or_default();
                    let statement = {
                        let view = crate::session::View {
                            names: &self.names,
                            statements: &statements,
                            portals: &portals,
                            wanted_stale: std::cell::Cell::new(false),
                        };
                        view.statement(&name)
                    };
                    let portal = Portal {
                        statement,
                        params: Arc::new(param_values(&b.parameters, &b.parameter_format_codes)),
                        formats: Arc::new(param_formats(
                            b.parameters.len(),
                            &b.parameter_format_codes,
                        )),
                        holdable: false,
                    };
                    let name = b.portal_name.unwrap_or_default();
                    ops.push(TableOp::Portal(name.clone(), Some(portal.clone())));
                    binds.push((index, name.clone(), portal.clone(), false));
                    portals.push((name, Some(portal)));
                }
                PgWireFrontendMessage::Close(c) => {
                    let name = c.name.unwrap_or_default();
                    if c.target_type == b'S' {
                        ops.push(TableOp::Statement(name.clone(), None));
                        statements.push((name, None));
                    } else {
                        ops.push(TableOp::Portal(name.clone(), None));
                        portals.push((name, None));
                    }
                }
                PgWireFrontendMessage::Execute(e) => {
                    let name = e.name.unwrap_or_default();
                    let portal = {
                        let view = crate::session::View {
                            names: &self.names,
                            statements: &statements,
                            portals: &portals,
                            wanted_stale: std::cell::Cell::new(false),
                        };
                        view.portal(&name)
                    };
                    if let Some(bind) = binds.iter_mut().rev().find(|b| b.1 == name) {
                        bind.3 = true;
                    }
                    let so_far = BatchSoFar {
                        statements: &statements,
                        portals: &portals,
                        changed_settings: &changed_settings,
                        code_created_by: code_created_by.as_deref(),
                    };
                    let (classified, text, admission) =
                        self.admit_portal(portal, &name, so_far).await;
                    match admission {
                        Ok(permitted) => {
                            self.remember(classified.class, &text, "allowed");
                            runs_unseen_code |= classified.runs_unseen_code();
                            if code_created_by.is_none()
                                && classified.facts().is_none_or(|f| f.creates_code())
                            {
                                code_created_by = Some(text.clone());
                            }
                            match classified.facts() {
                                Some(f) => {
                                    changes_statements |= f.may_change_statements();
                                    changes_portals |= f.may_change_portals();
                                    if f.may_change_settings() {
                                        // Whole: a grant binds what it says.
                                        changed_settings.push(text.to_string());
                                    }
                                }
                                None => {
                                    changes_statements = true;
                                    changes_portals = true;
                                    changed_settings.push(text.to_string());
                                }
                            }
                            admitted.push((index, text, permitted));
                        }
                        Err(r) => {
                            self.remember(classified.class, &text, "refused");
                            refused = Some(Refused::Gate(r, classified));
                        }
                    }
                }
                _ => {}
            }
        }
        if refused.is_none() {
            for (_, name, portal, executed) in std::mem::take(&mut binds) {
                if executed {
                    continue;
                }
                let so_far = BatchSoFar {
                    statements: &statements,
                    portals: &portals,
                    changed_settings: &changed_settings,
                    code_created_by: code_created_by.as_deref(),
                };
                let (classified, text, admission) =
                    self.admit_portal(Some(portal), &name, so_far).await;
                match admission {
                    Ok(permitted) => {
                        self.remember(classified.class, &text, "bound");
                        bound_only.push(permitted);
                    }
                    Err(r) => {
                        self.remember(classified.class, &text, "refused");
                        refused = Some(Refused::Gate(r, classified));
                        break;
                    }
                }
            }
        }
        let Some(refusal) = refused else {
            // Applied as the server confirms each (ParseComplete, …).
            let segment = self.segments_sent;
            self.pending_ops
                .extend(ops.into_iter().map(|op| (segment, op)));
            let mut admitted = admitted.into_iter().peekable();
            for (index, frame) in batch.into_iter().enumerate() {
                if admitted.peek().is_some_and(|(i, _, _)| *i == index) {
                    let Some((_, text, mut permitted)) = admitted.next() else {
                        break;
                    };
                    if let Some(r) = permitted.take_receipt() {
                        self.receipts.push_back(r);
                    }
                    if let Err(e) = self.to_server.execute(&frame, &text, permitted) {
                        // Cannot happen: the admission was made for this
                        // Execute. Nothing more of the batch is sent.
                        tracing::error!(error = %e.0, "an admission did not match its Execute");
                        return Err(WireError::Protocol("internal error".into()));
                    }
                    continue;
                }
                match Passive::new(frame) {
                    Ok(p) => self.to_server.passive(p),
                    Err(frame) => {
                        tracing::error!(tag = frame[0], "an unadmitted statement in a batch");
                        return Err(WireError::Protocol("internal error".into()));
                    }
                }
            }
            for permitted in bound_only {
                permitted.finish(gavel_core::Outcome::Succeeded {
                    detail: "bound (its parameters converted); not executed in this pipeline"
                        .into(),
                });
            }
            if runs_unseen_code {
                self.ran_unseen_code();
            }
            self.names.statements_stale |= changes_statements;
            self.names.portals_stale |= changes_portals;
            if sync {
                self.sent_sync();
                self.forwarded_since_sync = false;
            } else {
                self.forwarded_since_sync = true;
            }
            self.last_segment_synced = sync;
            return Ok(true);
        };
        // Statements allowed earlier in this batch are not run either.
        drop(bound_only);
        for (_, _, permitted) in admitted {
            permitted.finish(gavel_core::Outcome::Failed {
                detail: "not run: a later statement of the same pipeline was refused".into(),
            });
        }
        let (code, message, fatal) = match &refusal {
            Refused::Gate(r, classified) => {
                let pg = crate::hold::pg_refusal(r, classified, &self.gate);
                (pg.code, pg.message, matches!(r, Refusal::Revoked { .. }))
            }
            Refused::Batch { code, message } => {
                // Recorded like any denial, with what the batch would have
                // parsed.
                let texts: Vec<String> = batch
                    .iter()
                    .filter_map(|f| match wire::decode_frontend(f) {
                        Ok(PgWireFrontendMessage::Parse(p)) => Some(p.query),
                        _ => None,
                    })
                    .collect();
                let unknown = Classified::unknown(message.clone());
                let operation = if texts.is_empty() {
                    "<extended-protocol batch>".to_owned()
                } else {
                    texts.join("; ")
                };
                let action = self.action(&unknown, &operation, self.intent.clone(), None);
                let _ = self.gate.refuse_unjudgeable(action, message).await;
                (*code, message.clone(), false)
            }
        };
        if fatal {
            self.drain().await?;
            wire::fatal(&mut self.cout, code, &message);
            self.flush_client().await?;
            return Ok(false);
        }
        if !self.forwarded_since_sync {
            // Nothing of this pipeline reached the server: answer here, and
            // the transaction, if one is open, is untouched.
            self.drain().await?;
            match &refusal {
                Refused::Gate(r, classified) => {
                    self.refuse(r, classified);
                }
                Refused::Batch { code, message } => {
                    wire::error(&mut self.cout, code, message, None, None);
                }
            }
            if sync {
                wire::ready(&mut self.cout, self.tx_status);
            } else {
                self.discard = Discard::AnswerSync;
            }
            self.flush_client().await?;
        } else {
            // Part of the pipeline already ran on the server; have it raise
            // the refusal itself, so its answers stay in order and it skips
            // to Sync exactly as after any error. Its ParseComplete and
            // BindComplete come back like any other: the unnamed statement
            // becomes the DO block (never allowed), the unnamed portal is
            // gone.
            self.to_server.raise(code, &message);
            let segment = self.segments_sent;
            let raised = Prepared {
                text: Arc::from("gavel's own refusal"),
                param_types: Arc::default(),
                source: None,
                classified: Arc::new(Classified::unknown("gavel's own refusal".into())),
                intent: None,
            };
            self.pending_ops.push_back((
                segment,
                TableOp::Statement(String::new(), Some(Arc::new(raised))),
            ));
            self.pending_ops
                .push_back((segment, TableOp::Portal(String::new(), None)));
            self.to_server.sync_or_flush(sync);
            if sync {
                self.sent_sync();
                self.forwarded_since_sync = false;
            } else {
                self.discard = Discard::ForwardSync;
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn parameters_render_as_text_or_hex() {
        let p = vec![
            Some(Bytes::from_static(b"42")),
            None,
            Some(Bytes::from_static(&[0, 1])),
        ];
        assert_eq!(
            param_values(&p, &[0, 0, 1]),
            vec![
                serde_json::json!("42"),
                serde_json::Value::Null,
                serde_json::json!("\\x0001")
            ]
        );
    }

    #[test]
    fn long_names_are_refused_in_every_message() {
        let long = "a".repeat(64);
        let mut b = BytesMut::new();
        postgres_protocol::message::frontend::parse(&long, "SELECT 1", std::iter::empty(), &mut b)
            .unwrap();
        let m = wire::decode_frontend(&b).unwrap();
        assert!(check_names(&m).is_err());
        let mut b = BytesMut::new();
        postgres_protocol::message::frontend::execute(&long, 0, &mut b).unwrap();
        let m = wire::decode_frontend(&b).unwrap();
        assert!(check_names(&m).is_err());
        let mut b = BytesMut::new();
        postgres_protocol::message::frontend::close(b'S', &long, &mut b).unwrap();
        let m = wire::decode_frontend(&b).unwrap();
        assert!(check_names(&m).is_err());
    }
}
