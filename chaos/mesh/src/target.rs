//! A Helm-installed Chronicle release as the target of a chaos run: faults
//! are Chaos Mesh resources on its pods, the workloads go through the URLs
//! the operator gives (a port-forward of the client Service, or the
//! Service's own address from a Job inside the cluster).

use std::time::{Duration, Instant};

use chronicle_chaos::nemesis::Injected;
use chronicle_chaos::plan::{CheckedPlan, FaultSpec};
use chronicle_chaos::run::Target;
use chronicle_chaos::ChaosError;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::client::Mesh;
use crate::resources::{schedule, translate, ChaosObject, NatsPeer, Scene};
use crate::MeshError;

/// Where the release is and how to reach it.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    pub namespace: String,
    pub release: String,
    /// HTTP base URLs of the client Service (port-forwarded, or in-cluster).
    pub endpoints: Vec<String>,
    pub nats: NatsPeer,
    /// The NATS Service nodes dial (`<release>-nats.<ns>.svc`), for
    /// traffic-shaping faults.
    pub nats_service: Option<String>,
    /// The data volume's mount path in the chart's pods.
    pub data_path: String,
    /// The Chronicle container's name in the chart's pods.
    pub container: String,
    /// This run's id: labels and names every resource it creates.
    pub run: String,
}

/// How long Chaos Mesh gets to report a fault injected, and a deletion to
/// finish (its finalizer undoes the fault).
const INJECT_LIMIT: Duration = Duration::from_secs(60);
const DELETE_LIMIT: Duration = Duration::from_secs(120);

pub struct KubeTarget {
    runtime: tokio::runtime::Runtime,
    mesh: Mesh,
    scene: Scene,
    options: KubeOptions,
    hold: Duration,
    serial: usize,
    /// Resources of the fault in place (deleted on heal).
    live: Vec<ChaosObject>,
    /// The recurring faults' Schedules (deleted before the final reads).
    recurring: Vec<ChaosObject>,
    /// Held around every create, and taken for good by the Ctrl-C handler,
    /// so nothing is created after its cleanup listed the run's resources.
    creating: std::sync::Arc<tokio::sync::Mutex<bool>>,
    finished: bool,
}

/// Refuses a plan with a fault Chaos Mesh cannot express (a power cut, a
/// bridge or ring partition, nats-restart without NATS pods) before anything
/// starts, rather than when the nemesis first draws it.
pub fn check_plan(plan: &CheckedPlan, scene: &Scene) -> Result<(), MeshError> {
    let mut rng = SmallRng::seed_from_u64(0);
    let mut refused = Vec::new();
    for (i, fault) in plan.plan.faults.iter().enumerate() {
        if let Err(e) = translate(scene, fault, i, plan.hold, &mut rng) {
            refused.push(format!("fault {} ({fault:?}): {e}", i + 1));
        }
    }
    for (i, r) in plan.plan.recurring.iter().enumerate() {
        if let Err(e) = schedule(scene, &r.cron, &r.fault, i, plan.hold, &mut rng) {
            refused.push(format!("recurring {} ({:?}): {e}", i + 1, r.fault));
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(MeshError::Plan(format!(
            "the plan cannot run on Kubernetes:\n  {}",
            refused.join("\n  ")
        )))
    }
}

impl KubeTarget {
    /// Connects, finds the release's pods (every one ready), creates the
    /// plan's recurring faults, and deletes everything this run made when
    /// the process gets Ctrl-C or SIGTERM.
    pub fn connect(
        options: KubeOptions,
        plan: &CheckedPlan,
        seed: u64,
        mesh: Option<Mesh>,
        mut progress: impl FnMut(&str),
    ) -> Result<Self, MeshError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| MeshError::Kube(format!("runtime: {e}")))?;
        let mesh = match mesh {
            Some(m) => m,
            None => runtime.block_on(Mesh::connect(&options.namespace, &options.run))?,
        };
        let pods: Vec<_> = runtime
            .block_on(mesh.chronicle_pods(&options.release))?
            .into_iter()
            .filter(|p| !p.terminating)
            .collect();
        if pods.len() < 3 {
            return Err(MeshError::Plan(format!(
                "release {} in namespace {} has {} Chronicle pods; a chaos run needs 3 or more",
                options.release,
                options.namespace,
                pods.len()
            )));
        }
        if let Some(p) = pods.iter().find(|p| !p.ready) {
            return Err(MeshError::Kube(format!(
                "pod {} is not ready; a chaos run starts on a healthy cluster",
                p.name
            )));
        }
        progress(&format!(
            "release {} in {}: pods {}",
            options.release,
            options.namespace,
            pods.iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let scene = Scene {
            namespace: options.namespace.clone(),
            run: options.run.clone(),
            pods: pods.iter().map(|p| (p.node, p.name.clone())).collect(),
            nats: options.nats.clone(),
            data_path: options.data_path.clone(),
            container: options.container.clone(),
            nats_service: options.nats_service.clone(),
        };
        check_plan(plan, &scene)?;
        // Ctrl-C or SIGTERM: nothing this run made may stay behind.
        let cleaner = mesh.clone();
        let creating = std::sync::Arc::new(tokio::sync::Mutex::new(false));
        let stop_creating = creating.clone();
        runtime.spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!(
                "chaos: interrupted; deleting every resource of run {}",
                cleaner.run()
            );
            // Wait out a create in flight, and allow none after.
            let mut stopped = stop_creating.lock().await;
            *stopped = true;
            let code = match cleaner.delete_run().await {
                Ok(n) => {
                    eprintln!("chaos: deleted {n} resource(s)");
                    130
                }
                Err(e) => {
                    eprintln!("chaos: cleanup failed: {e}; delete them with `kubectl delete -l chronicle.io/chaos-run={}` on each Chaos Mesh kind", cleaner.run());
                    1
                }
            };
            std::process::exit(code);
        });
        let mut target = Self {
            runtime,
            mesh,
            scene,
            options,
            hold: plan.hold,
            serial: 0,
            live: Vec::new(),
            recurring: Vec::new(),
            creating,
            finished: false,
        };
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x5ced);
        for recurring in &plan.plan.recurring {
            target.serial += 1;
            let object = schedule(
                &target.scene,
                &recurring.cron,
                &recurring.fault,
                target.serial,
                plan.hold,
                &mut rng,
            )?;
            target.create(&object)?;
            target.recurring.push(object.clone());
            progress(&format!(
                "recurring: {:?} on {} (Schedule {})",
                recurring.fault, recurring.cron, object.name
            ));
        }
        Ok(target)
    }

    /// Creates `object` unless the run is being interrupted.
    fn create(&self, object: &ChaosObject) -> Result<(), MeshError> {
        self.runtime.block_on(async {
            let stopped = self.creating.lock().await;
            if *stopped {
                return Err(MeshError::Kube("interrupted".into()));
            }
            self.mesh.create(object).await
        })
    }

    /// Every pod ready (asked of the API server) and the endpoints answer
    /// `/health/ready` with 200, within `limit`.
    fn wait_ready(&self, limit: Duration) -> Result<(), MeshError> {
        let deadline = Instant::now() + limit;
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        loop {
            let pods = self
                .runtime
                .block_on(self.mesh.chronicle_pods(&self.options.release))?;
            // A pod being deleted does not count: its replacement must be ready.
            let ready = pods.iter().filter(|p| p.ready && !p.terminating).count();
            let pods_ready = ready >= self.scene.pods.len();
            let served = pods_ready
                && self.options.endpoints.iter().all(|e| {
                    agent
                        .get(&format!("{}/health/ready", e.trim_end_matches('/')))
                        .call()
                        .is_ok_and(|r| r.status() == 200)
                });
            if served {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(MeshError::Timeout(format!(
                    "the release was not ready within {limit:?} of the heal (pods: {})",
                    pods.iter()
                        .map(|p| format!(
                            "{} {}",
                            p.name,
                            if p.terminating {
                                "terminating"
                            } else if p.ready {
                                "ready"
                            } else {
                                "not ready"
                            }
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn delete_live(&mut self) -> Result<(), MeshError> {
        let live = std::mem::take(&mut self.live);
        let mut first = None;
        for object in &live {
            if let Err(e) = self
                .runtime
                .block_on(self.mesh.delete(object, DELETE_LIMIT))
            {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Target for KubeTarget {
    fn node_ids(&self) -> Vec<u64> {
        self.scene.pods.iter().map(|(id, _)| *id).collect()
    }

    fn endpoints(&self) -> Vec<String> {
        self.options.endpoints.clone()
    }

    fn inject(&mut self, spec: &FaultSpec, rng: &mut SmallRng) -> Result<Injected, ChaosError> {
        self.serial += 1;
        let translated = translate(&self.scene, spec, self.serial, self.hold, rng)?;
        for object in &translated.objects {
            self.create(object)?;
            self.live.push(object.clone());
            self.runtime
                .block_on(self.mesh.wait_injected(object, INJECT_LIMIT))?;
        }
        Ok(Injected {
            spec: spec.clone(),
            nodes: translated.nodes,
            description: translated.description,
            exit_code: None,
            // A pod deleted with a grace period is replaced; its old
            // container's exit code is not kept where the harness can read it.
            exit_observed: false,
        })
    }

    fn heal(&mut self, _injected: &Injected, limit: Duration) -> Result<(), ChaosError> {
        self.delete_live()?;
        Ok(self.wait_ready(limit)?)
    }

    /// Ends the recurring faults too: the final reads must not meet one.
    fn heal_all(&mut self, limit: Duration) -> Result<(), ChaosError> {
        self.delete_live()?;
        for object in std::mem::take(&mut self.recurring) {
            self.runtime
                .block_on(self.mesh.delete(&object, DELETE_LIMIT))?;
        }
        Ok(self.wait_ready(limit)?)
    }

    /// Deletes everything this run made (the recurring Schedules too); the
    /// release keeps running.
    fn finish(&mut self) -> Vec<String> {
        self.finished = true;
        match self.runtime.block_on(self.mesh.delete_run()) {
            Ok(_) => Vec::new(),
            Err(e) => vec![format!(
                "the run's Chaos Mesh resources were not all deleted ({e}); `chronicle chaos clean --run-id {}`",
                self.mesh.run()
            )],
        }
    }
}

impl Drop for KubeTarget {
    /// A run that ends in an error still removes its faults.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Err(e) = self.runtime.block_on(self.mesh.delete_run()) {
            eprintln!("chaos: cleanup: {e}");
        }
    }
}
