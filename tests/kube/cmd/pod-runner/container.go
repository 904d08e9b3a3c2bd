package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	podutil "k8s.io/kubernetes/pkg/api/v1/pod"
	"k8s.io/kubernetes/pkg/fieldpath"
	"k8s.io/kubernetes/pkg/securitycontext"
	"k8s.io/kubernetes/third_party/forked/golang/expansion"
)

// containerInit is the hidden subcommand that becomes a container.
const containerInit = "container-init"

// defaultPath is the PATH container runtimes give a container whose image
// sets none (containerd's and Docker's default), and the distroless one.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// mount is one volume mount: a directory (or file, with subPath) of this
// machine at a path of the container.
type mount struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"read_only"`
}

// spec is everything container-init needs, and what `exec` reads back.
type spec struct {
	Name       string            `json:"name"`
	Root       string            `json:"root"`  // a directory for the container's root overlay
	Image      map[string]string `json:"image"` // entrypoint path -> local binary
	Mounts     []mount           `json:"mounts"`
	Argv       []string          `json:"argv"`
	Env        []string          `json:"env"`
	WorkingDir string            `json:"working_dir"`
	UID        int64             `json:"uid"`
	GID        int64             `json:"gid"`
	Groups     []int64           `json:"groups"`
	NoNewPrivs bool              `json:"no_new_privs"`
	HostPID    bool              `json:"host_pid"` // the pod's hostPID: no PID namespace of its own
	ReadOnly   bool              `json:"read_only_root"`
	Pid        int               `json:"pid,omitempty"`
}

// running is a started container.
type running struct {
	spec spec
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited, with err set
	err  error
}

type exit struct {
	name string
	err  error
}

// startContainer starts c in a private mount namespace (container-init
// does the rest) and records its spec and pid in containers/NAME.json.
func (r *runner) startContainer(c *v1.Container) (*running, error) {
	s, err := r.containerSpec(c)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", c.Name, err)
	}
	dir := filepath.Join(r.state, "containers")
	if err := os.MkdirAll(s.Root, 0o700); err != nil {
		return nil, err
	}
	specFile := filepath.Join(dir, c.Name+".json")
	if err := writeJSON(specFile, s); err != nil {
		return nil, err
	}
	log, err := os.OpenFile(filepath.Join(dir, c.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, containerInit, specFile)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Unshareflags: syscall.CLONE_NEWNS, // Go makes / private (MS_REC|MS_PRIVATE) in the child
		Pdeathsig:    syscall.SIGKILL,
	}
	if !s.HostPID {
		// Each container its own PID namespace, as the runtime gives it
		// (the pod's shareProcessNamespace is not supported): it sees
		// only its own processes, not the others' /proc/PID/root.
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWPID
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s.Pid = cmd.Process.Pid
	if err := writeJSON(specFile, s); err != nil {
		return nil, err
	}
	rc := &running{spec: s, cmd: cmd, done: make(chan struct{})}
	r.containers[c.Name] = rc
	restartable := r.isRestartable(c)
	go func() {
		rc.err = cmd.Wait()
		log.Close()
		slog.Info("container exited", "container", c.Name, "status", fmt.Sprint(rc.err))
		close(rc.done)
		if restartable {
			r.exited <- exit{c.Name, rc.err}
		}
	}()
	slog.Info("container started", "container", c.Name, "pid", s.Pid, "uid", s.UID, "gid", s.GID, "groups", s.Groups)
	return rc, nil
}

// wait waits for a (non-restartable init) container to exit 0.
func (rc *running) wait(ctx context.Context) error {
	select {
	case <-rc.done:
		return rc.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (rc *running) stop(grace time.Duration) {
	_ = rc.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-rc.done:
	case <-time.After(grace):
		_ = rc.cmd.Process.Kill()
	}
}

// containerSpec resolves what the container runs, as whom, with which
// mounts. Command and args are the kubelet's (pkg/kubelet/container/
// helpers.go, ExpandContainerCommandAndArgs: `$(VAR)` expanded from the
// container's env) and the runtime's (no command: the image's entrypoint,
// then args). The identity is the kubelet's (pkg/securitycontext/util.go,
// the container's securityContext over the pod's; pkg/kubelet/kuberuntime/
// security_context.go: supplementary groups are the pod's fsGroup and
// supplementalGroups), the image's USER where neither sets one.
func (r *runner) containerSpec(c *v1.Container) (spec, error) {
	env, err := r.env(c)
	if err != nil {
		return spec{}, err
	}
	mapping := expansion.MappingFuncFor(envMap(env))
	var argv []string
	for _, s := range c.Command {
		argv = append(argv, expansion.Expand(s, mapping))
	}
	img, known := r.images[c.Image]
	if len(argv) == 0 {
		if !known {
			return spec{}, fmt.Errorf("no command, and image %q is not one the runner was given (--image)", c.Image)
		}
		argv = []string{img.entrypoint}
	}
	for _, s := range c.Args {
		argv = append(argv, expansion.Expand(s, mapping))
	}
	if share := r.pod.Spec.ShareProcessNamespace; share != nil && *share {
		return spec{}, errors.New("shareProcessNamespace is not supported by the runner")
	}
	s := spec{
		Name: c.Name, Root: filepath.Join(r.state, "containers", c.Name+".root"),
		Image: map[string]string{}, Argv: argv, Env: env, WorkingDir: c.WorkingDir,
		HostPID: r.pod.Spec.HostPID,
	}
	if known {
		s.Image[img.entrypoint] = img.binary
	}
	sc := securitycontext.DetermineEffectiveSecurityContext(r.pod, c)
	switch {
	case sc.RunAsUser != nil:
		s.UID = *sc.RunAsUser
	case img.uid != nil:
		s.UID = *img.uid
	}
	switch {
	case sc.RunAsGroup != nil:
		s.GID = *sc.RunAsGroup
	case sc.RunAsUser != nil && (img.uid == nil || *img.uid != *sc.RunAsUser):
		// A uid the image's /etc/passwd does not have (the image's USER is
		// the one entry the runner knows): group 0, as containerd's
		// oci.WithUserID (pkg/oci/spec_opts.go) and CRI-O give it.
		s.GID = 0
	case img.gid != nil:
		s.GID = *img.gid
	}
	if psc := r.pod.Spec.SecurityContext; psc != nil {
		if psc.FSGroup != nil {
			s.Groups = append(s.Groups, *psc.FSGroup)
		}
		s.Groups = append(s.Groups, psc.SupplementalGroups...)
	}
	s.NoNewPrivs = sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation
	s.ReadOnly = sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem
	for _, m := range c.VolumeMounts {
		source := r.volumeDir(m.Name)
		if m.SubPath != "" {
			source = filepath.Join(source, m.SubPath)
		}
		s.Mounts = append(s.Mounts, mount{Source: source, Target: m.MountPath, ReadOnly: m.ReadOnly})
	}
	return s, nil
}

// env is the container's environment as the runtime gives it: the image's
// (PATH, HOSTNAME, as containerd sets them) then the container's env in
// order (pkg/kubelet/kubelet_pods.go, makeEnvironmentVariables: values
// `$(VAR)`-expanded from the entries before them; fieldRef through
// pkg/fieldpath, the pod's IPs being this machine's loopback). envFrom,
// resourceFieldRef and the service links' variables are not supported.
func (r *runner) env(c *v1.Container) ([]string, error) {
	if len(c.EnvFrom) != 0 {
		return nil, errors.New("envFrom is not supported by the runner")
	}
	vars := map[string]string{"PATH": defaultPath, "HOSTNAME": r.pod.Name}
	order := []string{"PATH", "HOSTNAME"}
	for _, e := range c.Env {
		value := expansion.Expand(e.Value, expansion.MappingFuncFor(vars))
		if f := e.ValueFrom; f != nil {
			var err error
			switch {
			case f.FieldRef != nil && (f.FieldRef.FieldPath == "status.podIP" || f.FieldRef.FieldPath == "status.hostIP"):
				value = "127.0.0.1"
			case f.FieldRef != nil && f.FieldRef.FieldPath == "spec.serviceAccountName":
				value = r.pod.Spec.ServiceAccountName
			case f.FieldRef != nil:
				value, err = fieldpath.ExtractFieldPathAsString(r.pod, f.FieldRef.FieldPath)
			default:
				err = fmt.Errorf("env %s: only fieldRef is supported by the runner", e.Name)
			}
			if err != nil {
				return nil, err
			}
		}
		if _, seen := vars[e.Name]; !seen {
			order = append(order, e.Name)
		}
		vars[e.Name] = value
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+vars[k])
	}
	return out, nil
}

func envMap(env []string) map[string]string {
	m := map[string]string{}
	for _, kv := range env {
		for i := range kv {
			if kv[i] == '=' {
				m[kv[:i]] = kv[i+1:]
				break
			}
		}
	}
	return m
}

// setprivArgs is the container's identity for setpriv (util-linux).
func (s *spec) setprivArgs() []string {
	args := []string{"/usr/bin/setpriv",
		"--reuid=" + strconv.FormatInt(s.UID, 10), "--regid=" + strconv.FormatInt(s.GID, 10)}
	if len(s.Groups) == 0 {
		args = append(args, "--clear-groups")
	} else {
		groups := ""
		for i, g := range s.Groups {
			if i > 0 {
				groups += ","
			}
			groups += strconv.FormatInt(g, 10)
		}
		args = append(args, "--groups="+groups)
	}
	if s.NoNewPrivs {
		args = append(args, "--no-new-privs")
	}
	// The runner's Pdeathsig survives the change of uid: a container dies
	// with the runner.
	return append(args, "--pdeathsig=keep", "--")
}

// execIn runs a command inside a running container: its mount and PID
// namespaces and root (nsenter), its uid, gid and groups (setpriv), its
// environment.
func execIn(args []string) error {
	if len(args) < 5 || args[0] != "--state" || args[3] != "--" {
		return errors.New("usage: pod-runner exec --state DIR CONTAINER -- COMMAND [ARG]...")
	}
	var s spec
	data, err := os.ReadFile(filepath.Join(args[1], "containers", args[2]+".json"))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return err
	}
	if s.Pid == 0 {
		return fmt.Errorf("container %s has not started", args[2])
	}
	argv := []string{"nsenter", "-t", strconv.Itoa(s.Pid), "-m", "-r", "-w"}
	if !s.HostPID {
		argv = append(argv, "-p")
	}
	argv = append(append(argv, "--"), s.setprivArgs()...)
	argv = append(argv, args[4:]...)
	return syscall.Exec("/usr/bin/nsenter", argv, s.Env)
}

// isRestartable says whether c must keep running: a regular container, or
// an init container with `restartPolicy: Always`. (An init container that
// exits 0 has done its job.)
func (r *runner) isRestartable(c *v1.Container) bool {
	for i := range r.pod.Spec.InitContainers {
		if r.pod.Spec.InitContainers[i].Name == c.Name {
			return podutil.IsRestartableInitContainer(c)
		}
	}
	return true
}
