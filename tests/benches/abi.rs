//! ABI overhead: the same cross-attention + MLP block (32×32 positions, 64
//! channels, batch 8, context of 4 tokens; forward + backward) (a) written in
//! burn inside the host and (b) run by the loaded `block` plugin through the
//! ABI. Run with `cargo bench -p dtx-tests --bench abi`; figures go in
//! docs/performance.md.

use burn::tensor::{Distribution, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use dtx::plugins::{InjectArgs, Instance, load_library};
use dtx::tensor_abi::{CpuBackend, Session, vtables};
use dtx_plugin_api::ModelInfo;
use dtx_plugin_api::abi::PointInfo;
use dtx_tests::block::{BlockParams, block};

type B = CpuBackend;

fn bench(c: &mut Criterion) {
    let _session = Session::<B>::install(Default::default(), 0);
    let lib = load_library(
        &dtx_tests::plugin_path("dtx-test-plugin-block"),
        None,
        vtables::<B>(),
    )
    .expect("block plugin");
    let model = ModelInfo {
        kind: "bench".into(),
        points: vec![PointInfo {
            name: "mid.res.0".into(),
            channels: 64,
            height: 32,
            width: 32,
        }]
        .into(),
        ..Default::default()
    };
    let mut inst = Instance::<B>::new("block", lib, "{}", &model).expect("instance");
    let params = BlockParams::<B>::from_session();
    let dev = Default::default();
    let h = Tensor::<B, 4>::random([8, 64, 32, 32], Distribution::Normal(0.0, 1.0), &dev);
    let cond = Tensor::<B, 3>::random([8, 4, 64], Distribution::Normal(0.0, 1.0), &dev);
    let t = Tensor::<B, 1>::zeros([8], &dev);
    let temb = Tensor::<B, 2>::zeros([8, 64], &dev);

    let mut group = c.benchmark_group("cross-attention + MLP block, fwd+bwd, B=8 C=64 32x32");
    group.sample_size(20);
    group.bench_function("(a) burn in the host", |bench| {
        bench.iter(|| {
            let y = block(h.clone(), cond.clone(), &params);
            let grads = y.powf_scalar(2.0).mean().backward();
            std::hint::black_box(grads);
        })
    });
    group.bench_function("(b) plugin through the ABI", |bench| {
        bench.iter(|| {
            let y = inst
                .inject(InjectArgs {
                    point: "mid.res.0",
                    h: &h,
                    t: &t,
                    temb: &temb,
                    cond: Some(&cond),
                    labels: None,
                    training: true,
                })
                .expect("inject");
            let grads = y.powf_scalar(2.0).mean().backward();
            std::hint::black_box(grads);
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
