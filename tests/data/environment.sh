# hsm_notebook job environment: the set-up lines, then the job's command ("$@").
# A failing line stops it: that line's stderr is passed on and the last line names it.
[ -n "${BASH_VERSION:-}" ] || ! command -v bash >/dev/null 2>&1 || exec bash "$0" "$@"
_hsm_f=${HSM_TASK_DIR:-${TMPDIR:-/tmp}}/.hsm-env.$$
exec 7>&2 8>"$_hsm_f" 9<"$_hsm_f" && rm -f "$_hsm_f" || exit 1
_hsm_w=start
_hsm_end() {
  _hsm_a=; _hsm_z=; _hsm_l=
  while IFS= read -r _hsm_l <&9 || [ -n "$_hsm_l" ]; do
    printf '%s\n' "$_hsm_l" >&7
    [ -z "$_hsm_l" ] || { _hsm_a=${_hsm_a:-$_hsm_l}; _hsm_z=$_hsm_l; }
    _hsm_l=
  done
  [ "$1" = 0 ] && return 0
  trap - EXIT
  [ "$_hsm_a" = "$_hsm_z" ] || _hsm_a="$_hsm_a ... $_hsm_z"
  printf 'environment: %s: %s\n' "$_hsm_w" "${_hsm_a:-${2:-exit code $1}}" >&7
  exit "$1"
}
trap '_hsm_x=$?; _hsm_end "$((_hsm_x ? _hsm_x : 1))" "ended the shell (exit $_hsm_x)"' EXIT
_hsm_w=module
{ command -v module >/dev/null 2>&1 || { _hsm_s=sh; [ -z "${BASH_VERSION:-}" ] || _hsm_s=bash
    for _hsm_i in "${LMOD_PKG:+$LMOD_PKG/init/$_hsm_s}" "${MODULESHOME:+$MODULESHOME/init/$_hsm_s}" \
      "/usr/share/lmod/lmod/init/$_hsm_s" "/usr/share/modules/init/$_hsm_s" \
      /etc/profile.d/lmod.sh /etc/profile.d/z00_lmod.sh \
      /etc/profile.d/modules.sh; do
      [ -n "$_hsm_i" ] && [ -f "$_hsm_i" ] && { . "$_hsm_i"; break; }; done; }
  command -v module >/dev/null 2>&1 || { echo 'not found (no Lmod or Environment Modules init script in the usual places)' >&2; false; }
} 2>&8; _hsm_end $?
_hsm_w='module load cuda/12.1'
{ module load cuda/12.1
} 2>&8; _hsm_end $?
_hsm_w='module load gcc'
{ module load gcc
} 2>&8; _hsm_end $?
_hsm_w='pre_script: export A=1'
{ export A=1
} 2>&8; _hsm_end $?
_hsm_w='pre_script: if true; then ...'
{ if true; then
  source ~/.profile_extra
fi
} 2>&8; _hsm_end $?
_hsm_w='conda activate myenv'
{ _hsm_c=; for _hsm_x in "${CONDA_EXE:-}" "${MAMBA_EXE:-}" "$(command -v conda 2>/dev/null)" \
    "$(command -v micromamba 2>/dev/null)" "$(command -v mamba 2>/dev/null)" "$HOME"/miniforge3/bin/conda \
    "$HOME"/miniconda3/bin/conda "$HOME"/anaconda3/bin/conda "$HOME"/mambaforge/bin/conda \
    "$HOME"/.local/bin/micromamba "$HOME"/micromamba/bin/micromamba "$HOME"/bin/micromamba \
    /opt/conda/bin/conda /opt/miniforge3/bin/conda /usr/local/bin/micromamba; do
    case $_hsm_x in /*) [ -x "$_hsm_x" ] && { _hsm_c=$_hsm_x; break; } ;; esac; done
  [ -n "$_hsm_c" ] && [ -x "$_hsm_c" ] || { echo 'conda: not found (no conda, mamba or micromamba on PATH, in CONDA_EXE/MAMBA_EXE or the usual folders); set conda_exe' >&2; false; } &&
  case ${_hsm_c##*/} in
    micromamba*|mamba*) _hsm_n=${_hsm_c##*/}; _hsm_n=${_hsm_n%%[!a-z]*}; _hsm_h=$("$_hsm_c" shell hook -s posix) ;;
    *) _hsm_n=conda; _hsm_h=$("$_hsm_c" shell.posix hook) ;;
  esac && eval "$_hsm_h" && "$_hsm_n" activate myenv
} 2>&8; _hsm_end $?
_hsm_w='venv ~/venvs/x'
{ [ -f "$HOME"/venvs/x/bin/activate ] || { echo 'no bin/activate in ~/venvs/x' >&2; false; } &&
  . "$HOME"/venvs/x/bin/activate
} 2>&8; _hsm_end $?
_hsm_w=env
{ export PATH="/opt/x/bin:$PATH"
  export NOTE="it's \"\$(not run)\" ${HOME}"
} 2>&8; _hsm_end $?
trap - EXIT; exec 7>&- 8>&- 9<&-
exec "$@"
