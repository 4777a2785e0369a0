cwlVersion: v1.2
class: CommandLineTool
doc: |
  A trivial tool, so that a scatter of it measures scheduling overhead, not work. It declares itself
  short (ToolTimeLimit), which lets hpc-bridge pack such jobs into shared Slurm jobs.
requirements:
  ToolTimeLimit: {timelimit: 60}
baseCommand: echo
inputs:
  message: {type: string, inputBinding: {position: 1}}
outputs:
  out: {type: stdout}
stdout: out.txt
