//! Benchmark (issue 20, docs/PERFORMANCE.md): pods per second through containerd's CRI
//! plugin, for each runtime handler named, alternating which goes first: the wall time of
//! RunPodSandbox + CreateContainer + StartContainer of one container (the pod ready to
//! serve), its StopPodSandbox and RemovePodSandbox untimed. tests/containerd/bench starts
//! containerd, its CNI network and the images, and runs this.
//!
//!   cri-bench SOCKET IMAGE RUNS HANDLER...

use std::time::Instant;

#[path = "../cri/client.rs"]
mod cri;

use cri::*;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, image, runs, handlers @ ..] = args.as_slice() else {
        eprintln!("usage: cri-bench SOCKET IMAGE RUNS HANDLER...");
        std::process::exit(2);
    };
    let runs: usize = runs.parse().expect("RUNS is a number");
    assert!(!handlers.is_empty(), "name a runtime handler");
    let mut rs = connect(std::path::Path::new(socket)).await;
    // Per handler, per run: the whole, and RunPodSandbox, CreateContainer, StartContainer.
    let mut times: Vec<Vec<[f64; 4]>> = vec![Vec::new(); handlers.len()];
    // One pod of each first, untimed (binaries and image in the page cache).
    for i in 0..=runs {
        let mut order: Vec<usize> = (0..handlers.len()).collect();
        if i % 2 == 1 {
            order.reverse();
        }
        for h in order {
            let name = format!("bench{i}-{}", handlers[h]);
            let config = pod_config(&name, &format!("uid-{name}"), &name);
            let t = Instant::now();
            let pod = rs
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config.clone()),
                    runtime_handler: handlers[h].clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("RunPodSandbox ({}): {e}", handlers[h]))
                .into_inner()
                .pod_sandbox_id;
            let sandboxed = t.elapsed();
            let id = rs
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(container_config("app", image, "exec sleep 600")),
                    sandbox_config: Some(config),
                })
                .await
                .unwrap_or_else(|e| panic!("CreateContainer ({}): {e}", handlers[h]))
                .into_inner()
                .container_id;
            let created = t.elapsed();
            rs.start_container(StartContainerRequest { container_id: id })
                .await
                .unwrap_or_else(|e| panic!("StartContainer ({}): {e}", handlers[h]));
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
            let all = t.elapsed();
            if i > 0 {
                times[h].push([
                    ms(all),
                    ms(sandboxed),
                    ms(created - sandboxed),
                    ms(all - created),
                ]);
            }
            rs.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StopPodSandbox ({}): {e}", handlers[h]));
            rs.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod,
            })
            .await
            .unwrap_or_else(|e| panic!("RemovePodSandbox ({}): {e}", handlers[h]));
        }
    }
    let mut medians = Vec::new();
    for (h, runs) in handlers.iter().zip(&times) {
        let column = |k: usize| {
            let mut v: Vec<f64> = runs.iter().map(|r| r[k]).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let t = column(0);
        let median = t[(t.len() - 1) / 2];
        medians.push(median);
        let part = |k: usize| {
            let v = column(k);
            v[(v.len() - 1) / 2]
        };
        println!(
            "CRI pod (sandbox + 1 container) with {h}: median {median:.1} ms, min {:.1}, max {:.1} ({} pods): {:.2} pods/s; medians of RunPodSandbox {:.1}, CreateContainer {:.1}, StartContainer {:.1} ms",
            t[0],
            t[t.len() - 1],
            t.len(),
            1000.0 / median,
            part(1),
            part(2),
            part(3)
        );
    }
    if medians.len() == 2 {
        println!(
            "{} / {} = {:.2}",
            handlers[0],
            handlers[1],
            medians[0] / medians[1]
        );
    }
}
