"""Where qtool's independent pieces of work run: in this process (`local`, the default) or as
tasks on a Ray cluster (`ray`, the optional extra qtool[ray]). See qtool.parallel.executor."""
