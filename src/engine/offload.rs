//! Where the weights go when a GPU is present: a plan made before loading, from the GGUF's
//! tensor sizes, so that `--gpu-layers auto` can fit a VRAM budget and say why it chose what it
//! chose.
//!
//! Decoding one token reads every dense weight once but only `n_expert_used / n_expert` of
//! each layer's routed experts (6 of 64 for Lite). Decode is bound by memory bandwidth, so the
//! time per token is about the bytes read on the CPU over RAM bandwidth; the GPU's share is
//! over an order of magnitude cheaper. Per byte of VRAM, attention and shared experts therefore
//! save ten times more CPU reads than routed experts do, which is why "experts in RAM" (the
//! `--cpu-moe` shape) beats offloading whole layers on a small card. The planner does not
//! assume that: it scores both families of placements with the same cost and keeps the
//! cheapest that fits.

use std::fmt::Write as _;

pub use crate::model::{ModelShape, WeightTensor};
use crate::units::human_bytes;

/// A placement llama.cpp can be asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// `n_gpu_layers = n`: the last `n` repeating layers on the GPU; `n_layer + 1` also puts
    /// the output head there.
    Layers(usize),
    /// Everything but the token embedding on the GPU, with the routed experts of every layer
    /// from `gpu_expert_layers` on kept in RAM (0 is `--cpu-moe`).
    ExpertsInRam { gpu_expert_layers: usize },
}

/// A placement with its cost.
#[derive(Clone, Debug)]
pub struct Plan {
    pub placement: Placement,
    pub gpu_bytes: u64,
    pub cpu_bytes: u64,
    /// Weight bytes read per generated token on each side.
    pub cpu_read_per_token: f64,
    pub gpu_read_per_token: f64,
    /// Layers whose KV cache lives on the GPU.
    pub gpu_kv_layers: usize,
}

/// How much faster the GPU reads its weights than the CPU; only the order of magnitude
/// matters for ranking (laptop GPUs 10-30x their RAM, datacentre cards more).
pub const GPU_SPEEDUP: f64 = 20.0;

impl Plan {
    /// Relative decode cost (bytes read, the GPU's discounted).
    pub fn cost(&self) -> f64 {
        self.cpu_read_per_token + self.gpu_read_per_token / GPU_SPEEDUP
    }

    /// The number of layers to give llama.cpp.
    pub fn n_gpu_layers(&self, n_layer: usize) -> u32 {
        match self.placement {
            Placement::Layers(n) => n as u32,
            Placement::ExpertsInRam { .. } => n_layer as u32 + 1,
        }
    }

    /// Layers whose routed experts stay in RAM.
    pub fn cpu_expert_layers(&self, shape: &ModelShape) -> Vec<usize> {
        match self.placement {
            Placement::Layers(_) => Vec::new(),
            Placement::ExpertsInRam { gpu_expert_layers } => expert_layers(shape)
                .into_iter()
                .skip(gpu_expert_layers)
                .collect(),
        }
    }

    /// llama.cpp tensor-override patterns (to the CPU buffer) that realise the plan.
    pub fn override_patterns(&self, shape: &ModelShape) -> Vec<String> {
        let layers = self.cpu_expert_layers(shape);
        if layers.is_empty() {
            return Vec::new();
        }
        if layers.len() == expert_layers(shape).len() {
            return vec![r"\.ffn_(up|down|gate)_exps".to_string()];
        }
        let alt: Vec<String> = layers.iter().map(|l| l.to_string()).collect();
        vec![format!(
            r"^blk\.({})\.ffn_(up|down|gate)_exps",
            alt.join("|")
        )]
    }

    pub fn describe(&self, shape: &ModelShape) -> String {
        match self.placement {
            Placement::Layers(n) if n > (shape.n_layer as usize) => {
                "all layers on the GPU".to_string()
            }
            Placement::Layers(0) => "everything on the CPU".to_string(),
            Placement::Layers(n) => format!("{n} of {} layers on the GPU", shape.n_layer),
            Placement::ExpertsInRam { gpu_expert_layers } => {
                let total = expert_layers(shape).len();
                if gpu_expert_layers == 0 {
                    "attention, shared experts and dense layers on the GPU, routed experts in RAM (--cpu-moe)".to_string()
                } else if gpu_expert_layers >= total {
                    "all layers on the GPU".to_string()
                } else {
                    format!(
                        "attention, shared experts and dense layers on the GPU, plus the routed experts of {gpu_expert_layers} of {total} MoE layers; the other experts in RAM"
                    )
                }
            }
        }
    }
}

/// Layers that have routed experts, in order.
fn expert_layers(shape: &ModelShape) -> Vec<usize> {
    let mut v: Vec<usize> = shape
        .tensors
        .iter()
        .filter(|t| t.is_routed_expert())
        .filter_map(|t| t.layer())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The cost and size of a placement.
pub fn evaluate(shape: &ModelShape, placement: Placement) -> Plan {
    let active = if shape.n_expert == 0 {
        1.0
    } else {
        shape.n_expert_used as f64 / shape.n_expert as f64
    };
    let cpu_experts: Vec<usize> = match placement {
        Placement::ExpertsInRam { gpu_expert_layers } => expert_layers(shape)
            .into_iter()
            .skip(gpu_expert_layers)
            .collect(),
        Placement::Layers(_) => Vec::new(),
    };
    let on_gpu = |t: &WeightTensor| -> bool {
        if t.is_input() {
            return false;
        }
        match placement {
            Placement::Layers(n) => match t.layer() {
                Some(l) => l + n >= (shape.n_layer as usize),
                // The output head and final norm go with the "+1" layer.
                None => n > (shape.n_layer as usize),
            },
            Placement::ExpertsInRam { .. } => {
                !(t.is_routed_expert() && t.layer().is_some_and(|l| cpu_experts.contains(&l)))
            }
        }
    };
    let mut plan = Plan {
        gpu_kv_layers: match placement {
            Placement::Layers(n) => n.min(shape.n_layer as usize),
            Placement::ExpertsInRam { .. } => shape.n_layer as usize,
        },
        placement: placement.clone(),
        gpu_bytes: 0,
        cpu_bytes: 0,
        cpu_read_per_token: 0.0,
        gpu_read_per_token: 0.0,
    };
    for t in &shape.tensors {
        // One row of the embedding is read per token: nothing worth counting.
        let read = if t.is_input() {
            0.0
        } else if t.is_routed_expert() {
            t.bytes as f64 * active
        } else {
            t.bytes as f64
        };
        if on_gpu(t) {
            plan.gpu_bytes += t.bytes;
            plan.gpu_read_per_token += read;
        } else {
            plan.cpu_bytes += t.bytes;
            plan.cpu_read_per_token += read;
        }
    }
    plan
}

/// Every placement worth considering: each whole-layer count and each number of expert
/// layers kept on the GPU.
pub fn candidates(shape: &ModelShape) -> Vec<Plan> {
    let mut v: Vec<Plan> = (0..=(shape.n_layer as usize) + 1)
        .map(|n| evaluate(shape, Placement::Layers(n)))
        .collect();
    if shape.n_expert > 0 {
        v.extend((0..=expert_layers(shape).len()).map(|k| {
            evaluate(
                shape,
                Placement::ExpertsInRam {
                    gpu_expert_layers: k,
                },
            )
        }));
    }
    v
}

/// VRAM needed besides the weights: the KV cache of the GPU's layers and the compute buffers.
#[derive(Clone, Copy, Debug)]
pub struct Overheads {
    pub kv_per_layer: u64,
    pub compute: u64,
}

impl Overheads {
    pub fn for_plan(&self, plan: &Plan) -> u64 {
        if plan.gpu_bytes == 0 {
            return 0;
        }
        self.kv_per_layer * plan.gpu_kv_layers as u64 + self.compute
    }
}

/// The cheapest plan whose weights and overheads fit in `budget` bytes of VRAM, and the text
/// that explains the choice.
pub fn choose(shape: &ModelShape, budget: u64, over: Overheads) -> (Plan, String) {
    let all = candidates(shape);
    let fits = |p: &Plan| p.gpu_bytes + over.for_plan(p) <= budget;
    let best_of = |pred: &dyn Fn(&Plan) -> bool| {
        all.iter()
            .filter(|p| fits(p) && pred(p))
            .min_by(|a, b| a.cost().total_cmp(&b.cost()))
            .cloned()
    };
    let best = best_of(&|_| true).expect("the CPU-only plan always fits");
    let best_layers = best_of(&|p| matches!(p.placement, Placement::Layers(_)));
    let best_experts = best_of(&|p| matches!(p.placement, Placement::ExpertsInRam { .. }));
    let mut why = String::new();
    let _ = write!(
        why,
        "auto offload for a {} VRAM budget: {}",
        human_bytes(budget),
        best.describe(shape)
    );
    let line = |p: &Plan| {
        format!(
            "{} ({} on the GPU; {} of weights read per token in RAM)",
            p.describe(shape),
            human_bytes(p.gpu_bytes + over.for_plan(p)),
            human_bytes(p.cpu_read_per_token as u64)
        )
    };
    let _ = write!(why, "\n  chosen: {}", line(&best));
    for alt in [best_layers, best_experts].into_iter().flatten() {
        // The same tensors on each side is the same plan under another name.
        if alt.gpu_bytes != best.gpu_bytes || alt.cpu_bytes != best.cpu_bytes {
            let _ = write!(why, "\n  beats:  {}", line(&alt));
        }
    }
    (best, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lite's shape in Q4_K_M proportions (MiB): 27 layers, layer 0 dense, 64 experts top-6.
    fn lite() -> ModelShape {
        let mib = |x: f64| (x * 1048576.0) as u64;
        let mut tensors = vec![
            WeightTensor {
                name: "token_embd.weight".into(),
                bytes: mib(114.0),
                ..Default::default()
            },
            WeightTensor {
                name: "output.weight".into(),
                bytes: mib(168.0),
                ..Default::default()
            },
        ];
        for l in 0..27 {
            tensors.push(WeightTensor {
                name: format!("blk.{l}.attn_kv_a_mqa.weight"),
                bytes: mib(15.0),
                ..Default::default()
            });
            if l == 0 {
                tensors.push(WeightTensor {
                    name: format!("blk.{l}.ffn_up.weight"),
                    bytes: mib(60.0),
                    ..Default::default()
                });
            } else {
                tensors.push(WeightTensor {
                    name: format!("blk.{l}.ffn_up_shexp.weight"),
                    bytes: mib(5.0),
                    ..Default::default()
                });
                for p in ["gate", "up", "down"] {
                    tensors.push(WeightTensor {
                        name: format!("blk.{l}.ffn_{p}_exps.weight"),
                        bytes: mib(110.0),
                        ..Default::default()
                    });
                }
            }
        }
        ModelShape {
            tensors,
            n_layer: 27,
            n_expert: 64,
            n_expert_used: 6,
            ..Default::default()
        }
    }

    const NONE: Overheads = Overheads {
        kv_per_layer: 0,
        compute: 0,
    };

    #[test]
    fn everything_fits_on_a_big_card() {
        let (plan, _) = choose(&lite(), 1 << 40, NONE);
        assert_eq!(plan.cpu_read_per_token, 0.0);
        assert_eq!(plan.cpu_bytes, (114.0 * 1048576.0) as u64);
    }

    #[test]
    fn a_small_card_keeps_the_experts_in_ram() {
        let shape = lite();
        let (plan, why) = choose(&shape, 2 << 30, NONE);
        assert!(
            matches!(plan.placement, Placement::ExpertsInRam { .. }),
            "{why}"
        );
        // All dense weights are on the GPU, so the CPU reads only active experts.
        let cpu_moe = evaluate(
            &shape,
            Placement::ExpertsInRam {
                gpu_expert_layers: 0,
            },
        );
        assert!(plan.cost() <= cpu_moe.cost());
        assert!(why.contains("beats:"), "{why}");
        let pats = plan.override_patterns(&shape);
        assert_eq!(pats.len(), 1);
        // The patterns name exactly the CPU layers.
        let layers = plan.cpu_expert_layers(&shape);
        assert!(!layers.is_empty() && !layers.contains(&0));
    }

    #[test]
    fn nothing_fits_means_cpu_only() {
        let (plan, _) = choose(&lite(), 1 << 20, NONE);
        assert_eq!(plan.placement, Placement::Layers(0));
        assert_eq!(plan.gpu_bytes, 0);
    }

    #[test]
    fn overheads_count_against_the_budget() {
        let shape = lite();
        let over = Overheads {
            kv_per_layer: 64 << 20,
            compute: 512 << 20,
        };
        let (plan, _) = choose(&shape, 4 << 30, over);
        assert!(plan.gpu_bytes + over.for_plan(&plan) <= 4 << 30);
        let (loose, _) = choose(&shape, 4 << 30, NONE);
        assert!(loose.gpu_bytes > plan.gpu_bytes);
    }

    #[test]
    fn layer_counts_follow_llama_cpp() {
        let shape = lite();
        let p = evaluate(&shape, Placement::Layers(2));
        // The last two layers: blk.25 and blk.26, no output head.
        let per_layer = ((15.0 + 5.0 + 330.0) * 1048576.0) as u64;
        assert_eq!(p.gpu_bytes, 2 * per_layer);
        let all = evaluate(&shape, Placement::Layers(28));
        assert_eq!(all.cpu_bytes, (114.0 * 1048576.0) as u64);
    }
}
