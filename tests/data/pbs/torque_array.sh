#!/bin/bash
#PBS -N hsm-lr-sweep-20
#PBS -V
#PBS -r y
#PBS -j oe
#PBS -q workq
#PBS -l walltime=1:30:00
#PBS -l nodes=1:ppn=4:gpus=1
#PBS -l mem=16384mb
#PBS -A lab
#PBS -W group_list=ml
#PBS -m n
job=$(sed -n "$((PBS_ARRAYID + 1))p" /scratch/ana/sweep/slurm/chunk-1.jobs)
[ ! -s /scratch/ana/sweep/tasks/"$job"/pid ] || export SLURM_RESTART_COUNT=1
echo "${PBS_JOBID}" > /scratch/ana/sweep/tasks/"$job"/slurm_id
exec /bin/sh /scratch/ana/sweep/tasks/"$job"/run.sh
