"""Local AWS emulator and kube-apiserver launcher, used by the tests and `keyrotor demo`."""
