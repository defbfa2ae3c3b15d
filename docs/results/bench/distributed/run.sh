#!/usr/bin/env bash
# Steps per second of the autoencoder at batch 1000: 1 process x 2 threads
# against 2 processes x 1 thread (mpirun), K-FAC, EKFAC, adaptive K-FAC, SGD.
set -u
K=/work/runs/kfac-mpi
OUT=/work/runs/scaling/out
rm -rf $OUT; mkdir -p $OUT
MPI="mpirun -np 2 --allow-run-as-root --bind-to none"
for rep in 1 2; do
  for opt in "kfac" "ekfac" "kfac --adaptive" "sgd"; do
    n=$(echo $opt | tr -d ' -')
    common="train --task autoencoder --optimizer $opt --steps 60 --eval-every 1000 --quiet"
    $K $common --threads 2 --out $OUT/$n-1x2-plain-$rep > /dev/null
    [ "$opt" = sgd ] && continue
    $K $common --threads 2 --parts 2 --out $OUT/$n-1x2-parts2-$rep > /dev/null
    $MPI $K $common --threads 1 --parts 2 --reduction sum --out $OUT/$n-2x1-sum-$rep > /dev/null
    $MPI $K $common --threads 1 --parts 2 --reduction ordered --out $OUT/$n-2x1-ordered-$rep > /dev/null
  done
done
echo done
