set -x
P="python exp.py --split selection --n 24 --zsteps 150 --restarts 2 --out /tmp/proj/sel.jsonl"
$P --tag z150 --tsteps 100 --locality 0
$P --tag z150s --ssim 0.5 
$P --tag z150_loc1r3 --tsteps 100 --locality 1 --radius 3 --samples 1
$P --tag z150_loc1r6 --tsteps 100 --locality 1 --radius 6 --samples 1
$P --tag z150_ssimT_loc1r3 --tsteps 100 --locality 1 --radius 3 --samples 1 --tssim 0.5
