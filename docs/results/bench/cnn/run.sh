#!/bin/bash
# The CNN race (issue 17): 100 steps, batch 256, seed 0, MNIST-5k, 2 threads, f32, faer.
B=${KFAC:-target/release/kfac}
O=${OUT:-out/cnn}
S=100
mkdir -p $O
run() { name=$1; shift; [ -f $O/$name/metrics.json ] || $B train --task cnn --steps $S --eval-every 10 --threads 2 --out $O/$name "$@" > $O/$name.log 2>&1; }
for lr in 0.01 0.03 0.1; do run sgd-$lr --optimizer sgd --lr $lr; done
for lr in 0.001 0.003 0.01; do run adam-$lr --optimizer adam --lr $lr; done
run kfac --optimizer kfac
run ekfac --optimizer ekfac
run kfac-adaptive --optimizer kfac --adaptive
run ekfac-adaptive --optimizer ekfac --adaptive
run kfac-reduce --optimizer kfac --sharing reduce
# The grid's edges, added after the first pass put Adam's and SGD's best at the grid's end:
run adam-0.03 --optimizer adam --lr 0.03
run sgd-0.3 --optimizer sgd --lr 0.3
# The fixed rule's grid (learning rate x damping; momentum 0.9, KL clip 1 as by default;
# lr 0.3 with damping 1 is the default, run above as kfac and ekfac):
for kind in kfac ekfac; do
  for lr in 0.1 0.3 1; do
    for d in 0.1 0.3 1; do
      [ $lr = 0.3 ] && [ $d = 1 ] && continue
      run $kind-lr$lr-d$d --optimizer $kind --lr $lr --damping $d
    done
  done
done
# The damping's edge, added after the first pass put both best runs at damping 1:
for kind in kfac ekfac; do for lr in 0.1 0.3 1; do run $kind-lr$lr-d3 --optimizer $kind --lr $lr --damping 3; done; done
echo done
