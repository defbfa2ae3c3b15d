#!/bin/bash
# Issue 21, items 7 and 8: adaptive K-FAC and EKFAC on the 5,000-example set
# as both splits (kfac-jax's comparison), 200 steps of batch 1000, seed 0,
# 2 threads, f32, faer, from the sparse and from the Gaussian start, then one
# lever at a time from the Gaussian start; and every optimizer's peak RSS on
# the default autoencoder. Each run under /usr/bin/time -v.
# Usage: KFAC=target/release/kfac OUT=out/init DATA=dir bash run.sh
# DATA holds {train,t10k}-{images-idx3,labels-idx1}-ubyte(.gz), here the
# embedded subset's files linked under both names.
B=${KFAC:-target/release/kfac}
O=${OUT:-out/init}
D=${DATA:?DATA: a directory with the 5,000-example set as both splits}
mkdir -p $O
run() {
  name=$1; shift
  [ -f $O/$name/metrics.json ] && return
  /usr/bin/time -v $B train --task autoencoder --steps 200 --threads 2 --quiet --out $O/$name "$@" \
    > $O/$name.log 2> $O/$name.time
}
for kind in kfac ekfac; do
  run $kind-sparse --data $D --optimizer $kind --adaptive
  run $kind-gaussian --data $D --optimizer $kind --adaptive --init gaussian
  run $kind-gaussian-refresh5 --data $D --optimizer $kind --adaptive --init gaussian --refresh-period 5
  run $kind-gaussian-l2-0 --data $D --optimizer $kind --adaptive --init gaussian --l2 0
  run $kind-gaussian-stats1 --data $D --optimizer $kind --adaptive --init gaussian --stats-fraction 1
done
# The first-order optimizers and the fixed rule from both starts, on the same set.
for opt in sgd adam kfac ekfac; do
  run $opt-fixed-sparse --data $D --optimizer $opt
  run $opt-fixed-gaussian --data $D --optimizer $opt --init gaussian
done
# Item 8: peak RSS of each optimizer on the default autoencoder (embedded data).
for opt in sgd adam kfac ekfac; do run rss-$opt --optimizer $opt; done
for opt in kfac ekfac; do run rss-$opt-adaptive --optimizer $opt --adaptive; done
run rss-kfac-tridiagonal --optimizer kfac --structure tridiagonal
echo done
