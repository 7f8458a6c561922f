//! The engine replays the suite's own plans: every trial of the embedded case table is planned
//! (`plan_all`), its world is built in memory as the objects the enforcer's store consumes
//! (namespaces, pods with their named container ports, two nodes; addresses from a deterministic
//! layout, `world.rs`), and its steps are fed to the store in order. At every probe step each
//! planned pair is judged by `netpol_enforcer::engine::decide` and compared with the plan's
//! expectation; all mismatches of a trial are reported together, naming the step and the pairs.
//!
//! So a case added to `cases/` is checked against the engine too, with no second transcription.
//! The case table itself is checked against the references' Appendix A in `table.rs`.
//!
//! Only the reference engine is judged here, in-process: no cluster, no kernel (SCTP steps are
//! judged like the others). A step that cannot be judged this way is skipped and must be listed,
//! with its reason, in [`SKIPPED`].
//!
//! One libtest trial per planned trial, under the suite's trial names, so a filter picks cases
//! as `netpol-conformance run` does; `replay::whole_table` replays them all and prints the
//! coverage. Run: `cargo test -p netpol-conformance --test engine_replay -- --nocapture`.

mod world;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;

use libtest_mimic::{Arguments, Failed, Trial};
use netpol_conformance::case::{ObjectRef, load_embedded, load_files};
use netpol_conformance::plan::{Action, Plan, ProbePlan, plan_all};
use netpol_conformance::translate;
use netpol_conformance::world::Protocol;
use netpol_enforcer::engine::{Verdict, decide};
use netpol_enforcer::flow::{self, Flow};
use netpol_enforcer::store::{Event, Object, Writer};
use serde_json::Value;
use world::Layout;

/// Probe steps the engine cannot judge in-process: `(trial, step index, reason)`. Empty while
/// every probe of the table can be judged; an entry must say why its step cannot be.
const SKIPPED: &[(&str, usize, &str)] = &[];

/// The source port of every replayed connection (any unprivileged port would do).
const SOURCE_PORT: u16 = 40000;

/// A policy object present in the replayed cluster, by kind, realized namespace and name.
type PolicyKey = (String, Option<String>, String);

/// One trial being replayed: the synthetic world, the store's only writer, and the policy
/// objects as the cluster would have them (patches apply to these).
struct Replay {
    layout: Layout,
    writer: Writer,
    policies: BTreeMap<PolicyKey, Value>,
    /// Model pods deleted for good (`delete_pods`).
    deleted: Vec<String>,
}

/// What a probe step came to.
enum Judged {
    /// Every pair judged: how many, how many of them expected blocked, and the lines of those
    /// the engine judged otherwise.
    Pairs(usize, usize, Vec<String>),
    /// The step cannot be judged in-process, for this reason.
    Skipped(String),
}

/// Totals over the replayed trials (one, or the whole table), checked by [`verdict`].
#[derive(Default)]
struct Tally {
    trials: usize,
    steps: usize,
    probes: usize,
    pairs: usize,
    /// Pairs judged that the plan expects blocked.
    blocked: usize,
    /// `(trial, step index, reason)`.
    skipped: Vec<(String, usize, String)>,
    /// One message per failing trial.
    failures: Vec<String>,
}

impl Replay {
    fn new(plan: &Plan) -> Self {
        let layout = Layout::new(&plan.world);
        let mut writer = Writer::new();
        for object in layout.objects() {
            writer.apply(Event::Apply(object));
        }
        Replay {
            layout,
            writer,
            policies: BTreeMap::new(),
            deleted: Vec::new(),
        }
    }

    /// Resolves placeholders and realizes the namespace of a planned object, as the runner does.
    fn realize(&self, obj: &Value) -> Result<Value, String> {
        let mut obj = translate::resolve(obj, &self.layout).map_err(|e| e.to_string())?;
        if let Some(ns) = obj.pointer("/metadata/namespace").and_then(Value::as_str)
            && let Some(real) = self.layout.realized(ns)
        {
            obj["metadata"]["namespace"] = Value::String(real.to_string());
        }
        Ok(obj)
    }

    fn key_of(obj: &Value) -> PolicyKey {
        let text = |p: &str| obj.pointer(p).and_then(Value::as_str).map(str::to_string);
        (
            text("/kind").unwrap_or_default(),
            text("/metadata/namespace"),
            text("/metadata/name").unwrap_or_default(),
        )
    }

    fn key_of_ref(&self, r: &ObjectRef) -> PolicyKey {
        let namespace = r.namespace.as_ref().map(|ns| {
            self.layout
                .realized(ns)
                .map_or_else(|| ns.clone(), str::to_string)
        });
        (r.kind.clone(), namespace, r.name.clone())
    }

    /// Puts a policy object into the cluster (create, update, or the result of a patch).
    fn store(&mut self, obj: Value) -> Result<(), String> {
        self.writer.apply(Event::Apply(world::policy(&obj)?));
        self.policies.insert(Self::key_of(&obj), obj);
        Ok(())
    }

    /// Removes a policy object; absent objects are not an error (as the backends delete).
    fn remove(&mut self, key: &PolicyKey) -> Result<(), String> {
        if let Some(obj) = self.policies.remove(key) {
            self.writer.apply(Event::Delete(world::policy(&obj)?));
        }
        Ok(())
    }

    /// Carries out one step that changes the cluster.
    fn apply(&mut self, action: &Action) -> Result<(), String> {
        match action {
            Action::Create(objs) | Action::Update(objs) => {
                for obj in objs {
                    let obj = self.realize(obj)?;
                    self.store(obj)?;
                }
            }
            Action::Patch { target, ops } => self.patch(target, ops)?,
            Action::Delete(refs) => {
                for r in refs {
                    self.remove(&self.key_of_ref(r))?;
                }
            }
            Action::DeleteAllPolicies => {
                let netpols: Vec<PolicyKey> = self
                    .policies
                    .keys()
                    .filter(|k| k.0 == "NetworkPolicy")
                    .cloned()
                    .collect();
                for key in &netpols {
                    self.remove(key)?;
                }
            }
            Action::LabelNamespace {
                namespace,
                set,
                remove,
            } => {
                let ns = self
                    .layout
                    .label_namespace(namespace, set, remove)
                    .ok_or_else(|| format!("no namespace {namespace} to label"))?;
                self.writer.apply(Event::Apply(ns));
            }
            Action::LabelPod { pod, set, remove } => {
                let p = self
                    .layout
                    .label_pod(pod, set, remove)
                    .ok_or_else(|| format!("no pod {pod} to label"))?;
                self.writer.apply(Event::Apply(p));
            }
            Action::RecreatePods(pods) => {
                for pod in pods {
                    let (old, new) = self
                        .layout
                        .recreate(pod)
                        .ok_or_else(|| format!("no pod {pod} to recreate"))?;
                    self.writer.apply(Event::Delete(old));
                    self.writer.apply(Event::Apply(new));
                }
            }
            Action::DeletePods(pods) => {
                for pod in pods {
                    let p = self
                        .layout
                        .pod_object(pod)
                        .ok_or_else(|| format!("no pod {pod} to delete"))?;
                    self.writer.apply(Event::Delete(Object::Pod(Box::new(p))));
                    self.deleted.push(pod.clone());
                }
            }
            Action::Probe(_) => unreachable!("probe steps are judged, not applied"),
        }
        Ok(())
    }

    /// JSON-patches an object the trial created, as the API server would.
    fn patch(&mut self, target: &ObjectRef, ops: &[Value]) -> Result<(), String> {
        let key = self.key_of_ref(target);
        let mut obj = self
            .policies
            .get(&key)
            .cloned()
            .ok_or_else(|| format!("patch: {} {} is not in the cluster", key.0, key.2))?;
        let ops = ops
            .iter()
            .map(|o| translate::resolve(o, &self.layout).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let patch: json_patch::Patch =
            serde_json::from_value(Value::Array(ops)).map_err(|e| format!("patch: {e}"))?;
        json_patch::patch(&mut obj, &patch).map_err(|e| format!("patch: {e}"))?;
        self.store(obj)
    }

    /// The address a probe of this model pod reaches, or why it has none here.
    fn address(&self, model: &str) -> Result<IpAddr, String> {
        if self.deleted.iter().any(|d| d == model) {
            return Err(format!(
                "{model} was deleted: probes of it end as errors, not verdicts"
            ));
        }
        self.layout
            .ip(model)
            .ok_or_else(|| format!("{model} has no address"))
    }

    /// Judges every pair of a probe step with the engine.
    fn probe(&mut self, index: usize, p: &ProbePlan) -> Judged {
        if p.port == 0 {
            return Judged::Skipped("the probe names a port the world does not serve".into());
        }
        let snapshot = self.writer.publish();
        let protocol = match p.protocol {
            Protocol::Tcp => flow::Protocol::Tcp,
            Protocol::Udp => flow::Protocol::Udp,
            Protocol::Sctp => flow::Protocol::Sctp,
        };
        let mut wrong = Vec::new();
        let (mut pairs, mut blocked) = (0, 0);
        for (from, to, &allowed) in p.expected.entries() {
            if self.layout.world().pod(from).is_some_and(|m| m.external) {
                return Judged::Skipped(format!(
                    "{from} is the external host: no pod to probe from"
                ));
            }
            let (src, dst) = match (self.address(from), self.address(to)) {
                (Ok(src), Ok(dst)) => (src, dst),
                (Err(why), _) | (_, Err(why)) => return Judged::Skipped(why),
            };
            let flow = Flow {
                src,
                dst,
                protocol,
                src_port: SOURCE_PORT,
                dst_port: p.port,
            };
            let d = decide(&snapshot, &flow);
            pairs += 1;
            blocked += usize::from(!allowed);
            let agrees = match d.verdict {
                Verdict::Accept => allowed,
                Verdict::Drop => !allowed,
                Verdict::Unknown => false,
            };
            if !agrees {
                wrong.push(format!(
                    "step {index} {}/{}{}: {from} -> {to} ({src} -> {dst}): expected {}, engine {:?}: {}",
                    p.protocol.as_str(),
                    p.port,
                    p.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default(),
                    if allowed { "allowed" } else { "blocked" },
                    d.verdict,
                    d.reason,
                ));
            }
        }
        Judged::Pairs(pairs, blocked, wrong)
    }
}

/// Replays one trial, adding to the totals.
fn replay(plan: &Plan, tally: &mut Tally) {
    let mut r = Replay::new(plan);
    let mut wrong = Vec::new();
    tally.trials += 1;
    for step in &plan.steps {
        tally.steps += 1;
        let Action::Probe(probe) = &step.action else {
            if let Err(e) = r.apply(&step.action) {
                wrong.push(format!("step {} ({}): {e}", step.index, step.action.name()));
                break;
            }
            continue;
        };
        tally.probes += 1;
        match r.probe(step.index, probe) {
            Judged::Pairs(n, blocked, lines) => {
                tally.pairs += n;
                tally.blocked += blocked;
                wrong.extend(lines);
            }
            Judged::Skipped(why) => {
                eprintln!("{} step {}: skipped: {why}", plan.trial, step.index);
                tally.skipped.push((plan.trial.clone(), step.index, why));
            }
        }
    }
    if !wrong.is_empty() {
        tally.failures.push(format!(
            "{} ({}): {} wrong:\n  {}",
            plan.trial,
            plan.case.origin,
            wrong.len(),
            wrong.join("\n  ")
        ));
    }
}

/// Replays every plan.
fn replay_all(plans: &[Plan]) -> Tally {
    let mut tally = Tally::default();
    for plan in plans {
        replay(plan, &mut tally);
    }
    tally
}

/// The verdict on replayed trials: no mismatch, and the skipped probe steps exactly those
/// [`SKIPPED`] names for these trials.
fn verdict(plans: &[Plan], tally: &Tally) -> Result<(), Failed> {
    if !tally.failures.is_empty() {
        return Err(tally.failures.join("\n").into());
    }
    let skipped: Vec<(&str, usize)> = tally
        .skipped
        .iter()
        .map(|(t, i, _)| (t.as_str(), *i))
        .collect();
    let listed: Vec<(&str, usize)> = SKIPPED
        .iter()
        .filter(|(t, _, _)| plans.iter().any(|p| p.trial == *t))
        .map(|(t, i, _)| (*t, *i))
        .collect();
    if skipped != listed {
        return Err(format!(
            "skipped probe steps {:?} are not those SKIPPED lists ({listed:?})",
            tally.skipped
        )
        .into());
    }
    Ok(())
}

/// The whole table at once: every trial replayed, enough pairs judged that a replay judging
/// nothing cannot pass, and no stale entry in [`SKIPPED`].
fn whole_table(plans: &[Plan]) -> Result<(), Failed> {
    let tally = replay_all(plans);
    eprintln!(
        "replayed {} trials, {} steps, {} probe steps, {} pairs judged ({} expected blocked), \
         {} probe steps skipped",
        tally.trials,
        tally.steps,
        tally.probes,
        tally.pairs,
        tally.blocked,
        tally.skipped.len()
    );
    if tally.trials != plans.len() || tally.pairs < 5000 || tally.blocked < 800 {
        return Err(format!(
            "replayed {} of {} trials, {} pairs judged, {} expected blocked",
            tally.trials,
            plans.len(),
            tally.pairs,
            tally.blocked
        )
        .into());
    }
    if let Some((trial, step, _)) = SKIPPED.iter().find(|(t, i, _)| {
        !tally
            .skipped
            .iter()
            .any(|s| (s.0.as_str(), s.1) == (*t, *i))
    }) {
        return Err(format!("SKIPPED lists {trial} step {step}, which was not skipped").into());
    }
    Ok(())
}

/// Plans cases given as one user file.
fn plan_user_file(text: &str) -> Vec<Plan> {
    let cases = load_files([("user.yaml".to_string(), text.to_string())]).expect("the case loads");
    plan_all(&cases).expect("the case plans")
}

/// The replay itself can fail: an expectation the engine disagrees with is reported with the
/// trial, the step and every pair.
fn a_wrong_expectation_is_reported_pair_by_pair() -> Result<(), Failed> {
    let plans = plan_user_file(
        r#"
- id: claims-deny-ingress-allows
  name: a default-deny-ingress policy that is wrongly expected to allow everything
  source: user
  area: replay
  world: upstream
  steps:
    - create:
        - apiVersion: networking.k8s.io/v1
          kind: NetworkPolicy
          metadata: {name: deny-all, namespace: x}
          spec: {podSelector: {}, policyTypes: [Ingress], ingress: []}
    - probe: {port: 80, protocol: TCP, expect: []}
"#,
    );
    let tally = replay_all(&plans);
    let [failure] = &tally.failures[..] else {
        return Err(format!("one failing trial expected: {:?}", tally.failures).into());
    };
    let head = "user::replay::claims-deny-ingress-allows (user.yaml:2): 24 wrong";
    let pair =
        "step 1 TCP/80: y/a -> x/b (10.244.0.4 -> 10.244.0.2): expected allowed, engine Drop";
    if !failure.starts_with(head) || !failure.contains(pair) {
        return Err(
            format!("the report does not name the trial, step and pairs:\n{failure}").into(),
        );
    }
    Ok(())
}

/// A probe of a pod deleted for good cannot be judged: the step is skipped with the reason, so
/// [`SKIPPED`] has to name it.
fn probes_of_a_deleted_pod_are_skipped_with_the_reason() -> Result<(), Failed> {
    let plans = plan_user_file(
        r#"
- id: deleted-pod
  name: a probe after a pod is deleted
  source: user
  area: replay
  world: upstream
  steps:
    - delete_pods: [x/a]
    - probe: {port: 80, protocol: TCP, expect: []}
"#,
    );
    let tally = replay_all(&plans);
    match &tally.skipped[..] {
        [(trial, 1, why)]
            if trial == "user::replay::deleted-pod" && why.contains("x/a was deleted") => {}
        other => return Err(format!("one skipped step expected: {other:?}").into()),
    }
    match verdict(&plans, &tally) {
        Err(e) if format!("{e:?}").contains("not those SKIPPED lists") => Ok(()),
        other => Err(format!("an unlisted skip must fail the trial: {other:?}").into()),
    }
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let cases = load_embedded().expect("the embedded case table loads");
    let plans = Arc::new(plan_all(&cases).expect("the embedded case table plans"));
    let mut trials: Vec<Trial> = plans
        .iter()
        .map(|plan| {
            let plan = plan.clone();
            Trial::test(plan.trial.clone(), move || {
                let plans = [plan];
                verdict(&plans, &replay_all(&plans))
            })
        })
        .collect();
    trials.push(Trial::test("replay::whole_table", move || {
        whole_table(&plans)
    }));
    trials.push(Trial::test(
        "replay::a_wrong_expectation_is_reported_pair_by_pair",
        a_wrong_expectation_is_reported_pair_by_pair,
    ));
    trials.push(Trial::test(
        "replay::probes_of_a_deleted_pod_are_skipped_with_the_reason",
        probes_of_a_deleted_pod_are_skipped_with_the_reason,
    ));
    libtest_mimic::run(&args, trials).exit_code()
}
