#!/bin/bash
#PBS -N hsm-lr-sweep-20
#PBS -V
#PBS -r y
#PBS -j oe
#PBS -q workq
#PBS -l walltime=1:30:00
#PBS -l select=1:ncpus=4:mem=16384mb:ngpus=1
#PBS -A lab
#PBS -W group_list=ml
#PBS -m n
job=$(sed -n "$((PBS_ARRAY_INDEX + 1))p" /scratch/ana/sweep/slurm/chunk-1.jobs)
[ ! -s /scratch/ana/sweep/tasks/"$job"/pid ] || export SLURM_RESTART_COUNT=1
echo "${PBS_JOBID}" > /scratch/ana/sweep/tasks/"$job"/slurm_id
exec /bin/sh /scratch/ana/sweep/tasks/"$job"/run.sh
