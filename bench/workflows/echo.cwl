cwlVersion: v1.2
class: CommandLineTool
doc: |
  A trivial tool, so that a scatter of it measures scheduling overhead, not work. Like most real
  tools it declares no ToolTimeLimit: nobody told hpc-bridge it is short. A message `sleep-S` makes
  it sleep S seconds first (bench/scatter.py's long element).
baseCommand: [sh, -c, 'case "$0" in sleep-*) sleep "${0#sleep-}";; esac; echo "$0"']
inputs:
  message: {type: string, inputBinding: {position: 1}}
outputs:
  out: {type: stdout}
stdout: out.txt
