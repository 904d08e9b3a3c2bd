// Command pod-runner is the test suite's kubelet stand-in (issue 31, §3).
// There is no kubelet and no container runtime on the test machines: this
// takes one admitted Pod from the API server and runs its containers on
// this machine as the pod spec says, with the kubelet's own code where it
// can be imported from k8s.io/kubernetes (the release go.mod pins):
//
//   - volumes (volumes.go): emptyDir, configMap, secret, downwardAPI and
//     projected volumes, written by the kubelet's atomic writer
//     (pkg/volume/util/atomic_writer.go) with the kubelet's payloads, owner
//     and modes (pkg/volume/configmap, pkg/volume/projected,
//     pkg/volume/util/util.go FsUserFrom, pkg/volume/volume_linux.go);
//   - projected service-account tokens (tokens.go) from the TokenRequest
//     API, bound to the pod, refreshed by the kubelet's rule
//     (pkg/kubelet/token/token_manager.go), or on a compressed schedule
//     when --compressed-token-life says so (a deviation, named as one);
//   - containers (container.go): each in a private mount namespace whose
//     root is a copy-on-write overlay of this machine's root, with the
//     image's entrypoint mapped to a local binary, the volumes mounted at
//     the spec's paths, the spec's command, args, env, uid, gid and groups.
//
// Usage:
//
//	pod-runner run --kubeconfig F --namespace NS --pod NAME --state DIR \
//	    [--image NAME=entrypoint=PATH,binary=HOSTPATH,user=UID:GID]... \
//	    [--compressed-token-life 20s] [--only CONTAINER,...]
//	pod-runner exec --state DIR CONTAINER -- COMMAND [ARG]...
//
// `run` stays in the foreground until SIGTERM or SIGINT, then stops the
// containers (regular ones first, then init sidecars in reverse order).
// `exec` runs a command inside a running container's mount namespace, root
// and identity, as `kubectl exec` would. Test infrastructure only.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: pod-runner run|exec|container-init ...")
		os.Exit(64)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = run(os.Args[2:])
	case "exec":
		err = execIn(os.Args[2:])
	case containerInit:
		err = initContainer(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "pod-runner:", err)
		os.Exit(1)
	}
}
