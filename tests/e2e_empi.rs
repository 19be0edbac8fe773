//! Identity matching on three real node processes: bulk ingest of CSV (through a mapping),
//! NDJSON, a FHIR Bundle and HL7 v2 (a bad record in each reported and skipped, the rest linked
//! across sources), upsert from stdin, match, explain, steward link, unlink and split that automatic
//! matching then respects, bad input; then a change-event subscriber that keeps its cursor
//! while a node is SIGKILLed under upserts, and gets every event exactly once; and a bulk ingest
//! killed part-way and run again.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::workload::leader_of;
use plexus_client::{Client, ClientError, ErrorReply, PersonRecord};
use plexus_proto::{model_shard_key, shard_for_key, EmpiEvent, MasterId};

const SHARDS: u32 = 8;

const CSV: &str = "MRN,First,Last,DOB,Sex,Phone,Street,Town,Zip
A1,Jonathan,Smith,14/03/1980,M,555-201-3344,12 Oak Street,Springfield,62704
A2,Maria,Garcia,02/11/1975,F,555-777-1212,9 Elm Ave,Shelbyville,62565
A3,Bad,Date,31/02/1990,F,555-000-0000,1 Nowhere,Springfield,62704
";

const MAPPING: &str = r#"source = "HOSP_A"
[fields]
source_id = "MRN"
given_name = "First"
family_name = "Last"
birth_date = { from = "DOB", date_format = "%d/%m/%Y" }
sex = "Sex"
phone = "Phone"
address_line = "Street"
city = "Town"
postcode = "Zip"
"#;

const NDJSON: &str = r#"{"source":"LAB_D","source_id":"L7","given_name":"Jon","family_name":"Smith","birth_date":"1980-03-14","sex":"M","phone":"(555) 201-3344"}
{"source":"LAB_D","source_id":"L8","given_name":"Maria","family_name":"Garcia","birth_date":"1975-11-02","sex":"F","postcode":"62565"}
{"source":"LAB_D","source_id":"L9","given_name":"Zed","birth_date":"not a date"}
"#;

const FHIR: &str = r#"{"resourceType":"Bundle","type":"collection","entry":[
 {"resource":{"resourceType":"Patient","id":"c-1","meta":{"source":"CLINIC_C"},"name":[{"family":"Smith","given":["Jonathan","Q"]}],"gender":"male","birthDate":"1980-03-14","telecom":[{"system":"phone","value":"555 201 3344"}],"address":[{"line":["12 Oak St"],"city":"Springfield","postalCode":"62704"}]}},
 {"resource":{"resourceType":"Patient","id":"c-2","meta":{"source":"CLINIC_C"},"name":[{"family":"Nguyen","given":["Anh"]}],"gender":"female","birthDate":"1990-07-01"}},
 {"resource":{"resourceType":"Patient","id":"c-3","meta":{"source":"CLINIC_C"},"name":[{"family":"Odd"}],"birthDate":"1990-13-01"}},
 {"resource":{"resourceType":"Observation","id":"o-1"}}
]}"#;

const HL7: &str = "MSH|^~\\&|ADT1|HOSP_B|REC|REC|202601011200||ADT^A01|MSG1|P|2.5\rPID|1||B55^^^HOSP_B^MR||GARCIA^MARIA||19751102|F|||9 Elm Avenue^^Shelbyville^IL^62565||555-777-1212\r";

fn server_error(e: ClientError) -> ErrorReply {
    match e {
        ClientError::Server(e) => e,
        other => panic!("not a server error: {other}"),
    }
}

/// Runs the CLI; its stdout and stderr, and whether it succeeded.
fn cli(dir: &Path, args: &[&str], stdin: Option<&str>) -> (String, String, bool) {
    let mut child = Command::new(common::BIN)
        .args(args)
        .arg("--config")
        .arg(dir.join("client.toml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run plexus");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        out.status.success(),
    )
}

fn ok(dir: &Path, args: &[&str]) -> (String, String) {
    let (out, err, success) = cli(dir, args, None);
    assert!(success, "plexus {args:?} failed: {err}");
    (out, err)
}

/// Every identity (master → members) as `empi clusters --json` prints it.
fn clusters(dir: &Path) -> BTreeMap<MasterId, BTreeSet<String>> {
    let (out, _) = ok(dir, &["empi", "clusters", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    v["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let members = c["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| format!("{}:{}", m["source"].as_str().unwrap(), m["source_id"].as_str().unwrap()))
                .collect();
            (c["master"].as_u64().unwrap(), members)
        })
        .collect()
}

/// The identity holding `key`, and its members.
fn cluster_of(all: &BTreeMap<MasterId, BTreeSet<String>>, key: &str) -> BTreeSet<String> {
    all.values().find(|m| m.contains(key)).cloned().unwrap_or_default()
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

async fn master_of(c: &Client, key: &str) -> MasterId {
    c.empi_get(key).await.unwrap().master
}

/// Polls until `done` holds (the EMPI outbox delivers index and membership changes a moment
/// after a write is acknowledged).
async fn eventually<T>(within: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "never got there within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identity_matching_end_to_end_on_three_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let port = common::base_port(11).to_string();
    let shards = SHARDS.to_string();
    let up = common::up(
        &dir,
        &["--nodes", "3", "--shards", &shards, "--base-port", &port],
        Duration::from_secs(180),
    );
    let c = common::client(&dir).await;
    let files = tmp.path().join("in");
    std::fs::create_dir_all(&files).unwrap();
    let file = |name: &str, text: &str| {
        let p = files.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (csv, mapping) = (file("hosp_a.csv", CSV), file("hosp_a.toml", MAPPING));
    let (ndjson, fhir, hl7) = (
        file("lab.ndjson", NDJSON),
        file("clinic.json", FHIR),
        file("hosp_b.hl7", HL7),
    );

    // Each format; the bad record of each is reported with its place and reason.
    let (_, err) = ok(
        &dir,
        &["empi", "ingest", "--format", "csv", "--mapping", &mapping, &csv],
    );
    assert!(err.contains("line 4") && err.contains("birth_date"), "{err}");
    let (_, err) = ok(&dir, &["empi", "ingest", "--format", "ndjson", &ndjson]);
    assert!(err.contains("line 3") && err.contains("not a date"), "{err}");
    let (out, err) = ok(&dir, &["empi", "ingest", "--format", "fhir", &fhir, "--json"]);
    assert!(err.contains("entry 2") && err.contains("birth"), "{err}");
    assert!(err.contains("entry 3: unsupported: resourceType Observation"), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["files"][0]["linked"], 2, "{out}");
    ok(&dir, &["empi", "ingest", "--format", "hl7v2", &hl7]);
    // A CSV without its mapping is refused before anything is sent.
    let (_, err, success) = cli(&dir, &["empi", "ingest", "--format", "csv", &csv], None);
    assert!(!success && err.contains("--mapping"), "{err}");

    // One person from three sources, another from three, a third alone.
    let smith = set(&["HOSP_A:A1", "LAB_D:L7", "CLINIC_C:c-1"]);
    let garcia = set(&["HOSP_A:A2", "LAB_D:L8", "HOSP_B:B55"]);
    let all = eventually(Duration::from_secs(20), async || {
        let all = clusters(&dir);
        (cluster_of(&all, "HOSP_A:A1") == smith && cluster_of(&all, "HOSP_A:A2") == garcia).then_some(all)
    })
    .await;
    assert_eq!(cluster_of(&all, "CLINIC_C:c-2"), set(&["CLINIC_C:c-2"]));
    assert_eq!(all.values().map(BTreeSet::len).sum::<usize>(), 7, "{all:?}");

    // Upsert from stdin joins the person; an update of the same key is not a new person.
    let jonny = r#"{"source":"REG_E","source_id":"R1","given_name":"Johnny","family_name":"Smith","birth_date":"1980-03-14","sex":"M","phone":"555.201.3344"}"#;
    let (out, err, success) = cli(&dir, &["empi", "upsert", "--json"], Some(jonny));
    assert!(success, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let smith_master = master_of(&c, "HOSP_A:A1").await;
    assert_eq!(v["master"].as_u64(), Some(smith_master), "{out}");
    assert_eq!(v["created"], false);
    let again = c
        .empi_upsert(serde_json::from_str::<PersonRecord>(jonny).unwrap())
        .await
        .unwrap();
    assert_eq!((again.master, again.created), (smith_master, false));

    // Match: the best candidates, linked ones marked, nothing stored.
    let probe = PersonRecord {
        source: "Q".into(),
        source_id: "1".into(),
        given_name: Some("Jonathan".into()),
        family_name: Some("Smith".into()),
        birth_date: Some("1980-03-14".into()),
        sex: Some("male".into()),
        phone: Some("5552013344".into()),
        ..PersonRecord::default()
    };
    let matches = c.empi_match(probe, 3).await.unwrap();
    assert!(!matches.is_empty() && matches.len() <= 3, "{matches:?}");
    assert!(matches.iter().all(|m| m.master == smith_master), "{matches:?}");
    assert!(
        matches[0].linked && matches[0].weight >= matches.last().unwrap().weight,
        "{matches:?}"
    );
    assert!(matches!(
        server_error(c.empi_get("Q:1").await.unwrap_err()),
        ErrorReply::NotFound(_)
    ));

    // Explain: every field's level and weight, the graph term and the total.
    let (out, _) = ok(&dir, &["empi", "explain", "HOSP_A:A1", "LAB_D:L7", "--json"]);
    let x: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let fields: Vec<&str> = x["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    for f in ["given_name", "family_name", "birth_date", "graph"] {
        assert!(fields.contains(&f), "{f} missing from {out}");
    }
    let sum: f64 = x["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["weight"].as_f64().unwrap())
        .sum::<f64>()
        + x["prior"].as_f64().unwrap();
    assert!((sum - x["total"].as_f64().unwrap()).abs() < 1e-6, "{out}");
    assert_eq!(x["same_master"], true);
    let (text, _) = ok(&dir, &["empi", "explain", "HOSP_A:A1", "CLINIC_C:c-2"]);
    assert!(text.contains("not linked"), "{text}");

    // Stewards: an unlink separates the pair and automatic matching keeps it so; a link joins
    // two identities that do not match.
    c.empi_steward("HOSP_A:A1", "LAB_D:L7", false).await.unwrap();
    eventually(Duration::from_secs(20), async || {
        (master_of(&c, "HOSP_A:A1").await != master_of(&c, "LAB_D:L7").await).then_some(())
    })
    .await;
    let lab = serde_json::from_str::<PersonRecord>(NDJSON.lines().next().unwrap()).unwrap();
    let relinked = c.empi_upsert(lab).await.unwrap();
    assert_ne!(
        relinked.master,
        master_of(&c, "HOSP_A:A1").await,
        "a steward unlink was overridden"
    );
    let r = c.empi_get("LAB_D:L7").await.unwrap();
    assert_eq!(r.unlinks, vec!["HOSP_A:A1".to_string()]);
    let (_, err, success) = cli(&dir, &["empi", "link", "CLINIC_C:c-2", "HOSP_A:A2"], None);
    assert!(success, "{err}");
    eventually(Duration::from_secs(20), async || {
        (master_of(&c, "CLINIC_C:c-2").await == master_of(&c, "HOSP_B:B55").await).then_some(())
    })
    .await;

    // Bad input: clear errors, and the node keeps serving.
    let bad = PersonRecord {
        source: "X".into(),
        source_id: "1".into(),
        birth_date: Some("1980-13-45".into()),
        ..PersonRecord::default()
    };
    assert!(
        matches!(server_error(c.empi_upsert(bad).await.unwrap_err()), ErrorReply::BadRequest(m) if m.contains("birth_date"))
    );
    let k0 = c.empi_match(PersonRecord::default(), 0).await.unwrap_err();
    assert!(matches!(server_error(k0), ErrorReply::BadRequest(m) if m.contains('k')));
    assert!(matches!(
        server_error(c.empi_explain("HOSP_A:A1", "NOPE:1").await.unwrap_err()),
        ErrorReply::NotFound(_)
    ));
    assert!(matches!(
        server_error(c.empi_events("garbage", 10).await.unwrap_err()),
        ErrorReply::BadRequest(_)
    ));
    assert!(matches!(
        server_error(c.empi_steward("HOSP_A:A1", "HOSP_A:A1", true).await.unwrap_err()),
        ErrorReply::BadRequest(_)
    ));
    assert_eq!(master_of(&c, "HOSP_A:A2").await, master_of(&c, "HOSP_B:B55").await);

    // A split: the record leaves its identity for one of its own, unlinked from every other
    // member (its steward link to HOSP_A:A2 becomes an unlink); the rest stay together.
    let joined = set(&["CLINIC_C:c-2", "HOSP_A:A2", "HOSP_B:B55"]);
    eventually(Duration::from_secs(20), async || {
        cluster_of(&clusters(&dir), "CLINIC_C:c-2")
            .is_superset(&joined)
            .then_some(())
    })
    .await;
    let before = master_of(&c, "CLINIC_C:c-2").await;
    let (out, _) = ok(&dir, &["empi", "split", "CLINIC_C:c-2", "--json"]);
    let split: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let unlinked: BTreeSet<String> = split["unlinked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert!(
        unlinked.contains("HOSP_A:A2") && unlinked.contains("HOSP_B:B55"),
        "{out}"
    );
    let own = split["master"].as_u64().unwrap();
    assert_ne!(own, before, "{out}");
    assert_eq!(master_of(&c, "CLINIC_C:c-2").await, own);
    let r = c.empi_get("CLINIC_C:c-2").await.unwrap();
    assert!(
        r.links.is_empty() && r.unlinks.iter().cloned().collect::<BTreeSet<_>>() == unlinked,
        "{r:?}"
    );
    assert_eq!(master_of(&c, "HOSP_A:A2").await, master_of(&c, "HOSP_B:B55").await);
    assert!(matches!(
        server_error(c.empi_split("NOPE:1").await.unwrap_err()),
        ErrorReply::NotFound(_)
    ));

    let restarted = events_survive_a_sigkill(&dir, &c).await;
    ingest_resumes_after_a_kill(&dir, &c).await;
    c.close().await;
    let _ = restarted.stop();
    up.stop();
}

/// Reads the whole event stream from `cursor` to its current end; the events and the cursor.
async fn drain(c: &Client, mut cursor: String) -> Result<(Vec<EmpiEvent>, String), ClientError> {
    let mut out = Vec::new();
    loop {
        let (page, next) = c.empi_events(&cursor, 50).await?;
        cursor = next;
        if page.is_empty() {
            return Ok((out, cursor));
        }
        out.extend(page);
    }
}

/// A subscriber pages the change stream with its cursor (keeping it across errors, as a
/// durable subscriber does) while upserts run and the leader of the model's shard (where event
/// pages are served) is SIGKILLed and restarted. Afterwards what it received is exactly the
/// stream: no event skipped, none twice; and every acknowledged upsert is held.
async fn events_survive_a_sigkill(dir: &Path, c: &Client) -> common::NodeProcess {
    let (_, start) = drain(c, String::new()).await.unwrap();
    let subscriber = {
        let c = c.clone();
        let mut cursor = start.clone();
        tokio::spawn(async move {
            let mut got: Vec<EmpiEvent> = Vec::new();
            let mut quiet_since: Option<Instant> = None;
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                match c.empi_events(&cursor, 7).await {
                    Ok((page, next)) => {
                        cursor = next;
                        if page.is_empty() {
                            // Quiet for 3 s after the writers are done: caught up.
                            let since = *quiet_since.get_or_insert_with(Instant::now);
                            if since.elapsed() > Duration::from_secs(3) && got.len() >= 40 {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        } else {
                            quiet_since = None;
                            got.extend(page);
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            got
        })
    };
    let writer = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..40 {
                let r = PersonRecord {
                    source: "CRASH".into(),
                    source_id: format!("{i}"),
                    given_name: Some(format!("Person{i}")),
                    family_name: Some(["Okafor", "Lindqvist", "Tanaka", "Moreau"][i % 4].into()),
                    birth_date: Some(format!("19{:02}-0{}-1{}", 40 + i, 1 + i % 9, i % 10)),
                    ..PersonRecord::default()
                };
                if let Ok(u) = c.empi_upsert(r).await {
                    acked.push(u.key);
                }
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
            acked
        })
    };
    let shard = shard_for_key(&model_shard_key(), SHARDS);
    let (victim, pid) = leader_of(c, shard).await.expect("the model's shard has a leader");
    tokio::time::sleep(Duration::from_millis(600)).await;
    eprintln!("killing node {victim} (pid {pid}), leader of the model's shard {shard}");
    common::signal(pid, "KILL");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted = common::start_node(dir, victim);
    let acked = writer.await.unwrap();
    assert!(acked.len() >= 20, "only {} upserts were acknowledged", acked.len());
    let got = subscriber.await.unwrap();
    let (stream, _) = eventually(Duration::from_secs(30), async || drain(c, start.clone()).await.ok()).await;
    let ids = |evs: &[EmpiEvent]| evs.iter().map(|e| (e.shard, e.seq)).collect::<Vec<_>>();
    let mut got_sorted = ids(&got);
    got_sorted.sort_unstable();
    let mut want = ids(&stream);
    want.sort_unstable();
    assert_eq!(got_sorted, want, "the subscriber's events differ from the stream");
    // Per shard, in order and without gaps.
    let mut next: BTreeMap<u32, u64> = BTreeMap::new();
    for e in &got {
        if let Some(n) = next.get(&e.shard) {
            assert_eq!(e.seq, *n, "shard {}: a gap or a repeat", e.shard);
        }
        next.insert(e.shard, e.seq + 1);
    }
    for key in &acked {
        assert!(
            got.iter().any(|e| e.record.as_deref() == Some(key.as_str())),
            "no event for {key}"
        );
        c.empi_get(key).await.unwrap();
    }
    restarted
}

/// A bulk ingest of synthetic records, SIGKILLed after its first checkpoint and run again: every
/// record is held once, and the second run went on from the checkpoint.
async fn ingest_resumes_after_a_kill(dir: &Path, c: &Client) {
    const RECORDS: usize = 6_000;
    let before = held_records(c).await;
    let data = dir.join("synth.ndjson");
    let data_s = data.display().to_string();
    let n = RECORDS.to_string();
    let synth = Command::new(common::BIN)
        .args(["empi", "synth", "--records", &n, "--seed", "9", "--out", &data_s])
        .output()
        .unwrap();
    assert!(synth.status.success(), "{}", String::from_utf8_lossy(&synth.stderr));
    let args = |extra: &[&str]| {
        let mut a: Vec<String> = [
            "empi",
            "ingest",
            "--format",
            "ndjson",
            "--batch",
            "50",
            "--concurrency",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push(data_s.clone());
        a.push("--config".into());
        a.push(dir.join("client.toml").display().to_string());
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let mut first = Command::new(common::BIN)
        .args(args(&[]))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let items = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            // The checkpoint itself, not the `.json.tmp` it is written through: the tmp file can
            // show progress that a kill before its rename loses (a CI run caught that).
            .find(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("empi-ingest-") && name.ends_with(".json")
            })
            .and_then(|e| std::fs::read(e.path()).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| (v["files"][0]["done"] == false).then(|| v["files"][0]["items"].as_u64()))
            .flatten()
            .unwrap_or(0);
        if items > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the ingest never checkpointed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = first.kill();
    let _ = first.wait();
    let out = Command::new(common::BIN).args(args(&["--json"])).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resuming after"), "the second run went on: {err}");
    let held = eventually(Duration::from_secs(30), async || {
        let n = held_records(c).await;
        (n == before + RECORDS).then_some(n)
    })
    .await;
    assert_eq!(held, before + RECORDS, "every synthetic record once");
}

/// Records held in all identities.
async fn held_records(c: &Client) -> usize {
    let mut held = 0;
    let mut after = None;
    loop {
        let (page, next) = c.empi_clusters(after, 1_000).await.unwrap();
        held += page.iter().map(|m| m.members.len()).sum::<usize>();
        match next {
            Some(n) => after = Some(n),
            None => return held,
        }
    }
}
