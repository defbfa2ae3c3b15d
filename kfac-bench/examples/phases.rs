//! Times the phases of one forward+backward pass of the reference autoencoder
//! and the products of its largest layer in the layouts the MLP uses.
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use kfac_bench::matrix;
use kfac_nn::backend::{Backend, Scalar};
use kfac_nn::loss::Loss;
use kfac_nn::mlp::{Activation, Init, Mlp, NoHook};
use ndarray::{Array2, s};

fn best(mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let sizes = [784, 1000, 500, 250, 30, 250, 500, 1000, 784];
    let mlp = Mlp::<f32>::new(
        &sizes,
        Activation::Tanh,
        Activation::Identity,
        Init::default(),
        0,
        &[(3, Activation::Identity)],
    )
    .unwrap();
    let la = f32::backend(Backend::Faer, true).unwrap();
    let x = matrix::<f32>(1000, 784, 1).mapv(|v| 0.5 + 0.5 * v);
    let fwd = mlp.forward(&*la, x.view(), &mut NoHook).unwrap();
    let g = Loss::SigmoidCrossEntropy.grad(fwd.output(), x.view()).unwrap();
    let mut times = vec![];
    for _ in 0..5 {
        let t = Instant::now();
        let mut acts = vec![x.to_owned()];
        let mut marks = vec![];
        for (l, layer) in mlp.layers.iter().enumerate() {
            let mut z = Array2::<f32>::zeros((1000, layer.d_out()));
            z.assign(&layer.w.column(layer.d_in()).insert_axis(ndarray::Axis(0)));
            marks.push(t.elapsed().as_secs_f64());
            la.gemm(1.0, acts[l].view(), layer.weight().t(), 1.0, z.view_mut()).unwrap();
            marks.push(t.elapsed().as_secs_f64());
            layer.activation.apply(z.view_mut());
            marks.push(t.elapsed().as_secs_f64());
            acts.push(z);
        }
        times.push(marks);
    }
    let m = &times[4];
    let d: Vec<String> = m
        .iter()
        .scan(0.0, |p, &x| {
            let r = format!("{:.1}", 1e3 * (x - *p));
            *p = x;
            Some(r)
        })
        .collect();
    println!("manual forward marks (alloc, gemm, act per layer): {}", d.join(" "));
    println!("forward  {:.1} ms", 1e3 * best(|| drop(mlp.forward(&*la, x.view(), &mut NoHook).unwrap())));
    println!("grad     {:.1} ms", 1e3 * best(|| drop(Loss::SigmoidCrossEntropy.grad(fwd.output(), x.view()).unwrap())));
    println!(
        "value    {:.1} ms",
        1e3 * best(|| {
            std::hint::black_box(Loss::SigmoidCrossEntropy.value(fwd.output(), x.view()).unwrap());
        })
    );
    println!("backward {:.1} ms", 1e3 * best(|| drop(mlp.backward(&*la, &fwd, g.view(), true, &mut NoHook).unwrap())));
    for (l, layer) in mlp.layers.iter().enumerate() {
        let a = fwd.acts[l].clone();
        let mut z = Array2::<f32>::zeros((1000, layer.d_out()));
        let t = best(|| la.gemm(1.0, a.view(), layer.weight().t(), 0.0, z.view_mut()).unwrap());
        let fl = 2.0 * 1000.0 * (layer.d_in() * layer.d_out()) as f64;
        let t2 = best(|| z.par_mapv_inplace(kfac_nn::backend::tanh_f32));
        let t3 = best(|| la.gemm(1.0, a.view(), layer.weight().t(), 1.0, z.view_mut()).unwrap());
        let t4 = best(|| {
            let mut zz = Array2::<f32>::zeros((1000, layer.d_out()));
            zz.assign(&layer.w.column(layer.d_in()).insert_axis(ndarray::Axis(0)));
            std::hint::black_box(zz);
        });
        println!("   beta=1 product {:.2} ms; alloc+bias {:.2} ms", 1e3 * t3, 1e3 * t4);
        println!(
            "layer {l} {}x{}: product {:.2} ms ({:.0} GFLOP/s), tanh {:.2} ms",
            layer.d_in(),
            layer.d_out(),
            1e3 * t,
            fl / t * 1e-9,
            1e3 * t2
        );
    }
    let w = matrix::<f32>(1000, 785, 2);
    let a = matrix::<f32>(1000, 784, 3);
    let gg = matrix::<f32>(1000, 1000, 4);
    let mut z = Array2::<f32>::zeros((1000, 1000));
    let mut gw = Array2::<f32>::zeros((1000, 784));
    let mut da = Array2::<f32>::zeros((1000, 784));
    let gf = |t: f64| 2.0 * 1000.0 * 1000.0 * 784.0 / t * 1e-9;
    let t = best(|| la.gemm(1.0, a.view(), w.slice(s![.., ..784]).t(), 0.0, z.view_mut()).unwrap());
    println!("forward product a Wᵀ:  {:.1} ms, {:.0} GFLOP/s", 1e3 * t, gf(t));
    let t = best(|| la.gemm(1.0, gg.t(), a.view(), 0.0, gw.view_mut()).unwrap());
    println!("weight product Gᵀ a:   {:.1} ms, {:.0} GFLOP/s", 1e3 * t, gf(t));
    let t = best(|| la.gemm(1.0, gg.view(), w.slice(s![.., ..784]), 0.0, da.view_mut()).unwrap());
    println!("input product G W:     {:.1} ms, {:.0} GFLOP/s", 1e3 * t, gf(t));
    let mut zz = z.clone();
    let t = best(|| zz.par_mapv_inplace(kfac_nn::backend::tanh_f32));
    println!("tanh 1e6 (parallel fast): {:.2} ms", 1e3 * t);
    let t = best(|| z.assign(&w.column(784).insert_axis(ndarray::Axis(0))));
    println!("bias broadcast 1e6: {:.2} ms", 1e3 * t);
}
