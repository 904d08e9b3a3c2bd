package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"
)

// initContainer runs in the container's new mount namespace and, unless the
// pod has hostPID, as PID 1 of its new PID namespace (the runner started it
// with CLONE_NEWNS and CLONE_NEWPID), as root, and becomes the container:
//
//  1. a tmpfs at spec.Root, and in it an overlay whose lower layer is this
//     machine's root: the container's root, copy-on-write, so that mount
//     points and the image's files are made there and never on this
//     machine (nothing the container writes outside its volumes stays);
//  2. /dev and /sys bound into it, and /proc: a new procfs of its PID
//     namespace, so that it sees its own processes only (with hostPID,
//     this machine's /proc); there is no network namespace: the container
//     sees this machine's network;
//  3. the image's entrypoint: the local binary bound at its path;
//  4. the volumes bound at the spec's paths, read-only where it says;
//  5. the root itself read-only under `readOnlyRootFilesystem`;
//  6. chroot there, then setpriv to the container's uid, gid and groups
//     (and no_new_privs under `allowPrivilegeEscalation: false`), which
//     runs the command with the container's environment: as this process
//     with hostPID, else as its child, this process staying PID 1 to pass
//     on SIGTERM and SIGINT (a command as PID 1 would ignore them without a
//     handler) and exit with the command's status (a deviation from the
//     runtime, where the command is PID 1, for the runner's stop).
func initContainer(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: pod-runner %s SPEC", containerInit)
	}
	data, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	var s spec
	if err := json.Unmarshal(data, &s); err != nil {
		return err
	}
	root, err := overlayRoot(s.Root)
	if err != nil {
		return err
	}
	binds := []string{"/dev", "/sys"}
	if s.HostPID {
		binds = append(binds, "/proc")
	} else if err := newProc(root); err != nil {
		return err
	}
	for _, dir := range binds {
		if err := bind(dir, root, dir, false); err != nil {
			return err
		}
	}
	for entrypoint, binary := range s.Image {
		if err := bind(binary, root, entrypoint, true); err != nil {
			return err
		}
	}
	for _, m := range s.Mounts {
		if err := bind(m.Source, root, m.Target, m.ReadOnly); err != nil {
			return fmt.Errorf("mount %s: %w", m.Target, err)
		}
	}
	if s.ReadOnly {
		if err := syscall.Mount("", root, "", syscall.MS_REMOUNT|syscall.MS_BIND|syscall.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("read-only root: %w", err)
		}
	}
	if err := syscall.Chroot(root); err != nil {
		return err
	}
	wd := s.WorkingDir
	if wd == "" {
		wd = "/"
	}
	if err := os.Chdir(wd); err != nil {
		return err
	}
	argv := append(s.setprivArgs(), s.Argv...)
	if s.HostPID {
		return syscall.Exec(argv[0], argv, s.Env)
	}
	return runAsPID1(argv, s.Env)
}

// newProc mounts a procfs of this process's PID namespace at the
// container's /proc.
func newProc(root string) error {
	target, err := securejoin.SecureJoin(root, "/proc")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(target, 0o555); err != nil {
		return err
	}
	flags := uintptr(syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_NOEXEC)
	if err := syscall.Mount("proc", target, "proc", flags, ""); err != nil {
		return fmt.Errorf("proc: %w", err)
	}
	return nil
}

// runAsPID1 runs argv as a child, passes SIGTERM and SIGINT on, and exits
// with its status.
func runAsPID1(argv, env []string) error {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env, cmd.Stdin, cmd.Stdout, cmd.Stderr = env, nil, os.Stdout, os.Stderr
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	if err := cmd.Start(); err != nil {
		return err
	}
	go func() {
		for sig := range signals {
			_ = cmd.Process.Signal(sig)
		}
	}()
	err := cmd.Wait()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		os.Exit(exit.ExitCode())
	}
	if err != nil {
		return err
	}
	os.Exit(0)
	return nil
}

// overlayRoot mounts a tmpfs at dir and an overlay of / in it; returns the
// overlay's path.
func overlayRoot(dir string) (string, error) {
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return "", fmt.Errorf("make / private: %w", err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "mode=0755"); err != nil {
		return "", fmt.Errorf("tmpfs: %w", err)
	}
	upper, work, root := filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "root")
	for _, d := range []string{upper, work, root} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return "", err
		}
	}
	opts := fmt.Sprintf("lowerdir=/,upperdir=%s,workdir=%s", upper, work)
	if err := syscall.Mount("overlay", root, "overlay", 0, opts); err != nil {
		return "", fmt.Errorf("overlay: %w", err)
	}
	return root, nil
}

// bind mounts source at path in the container's root (resolved inside it,
// symlinks such as /var/run -> /run included; made there: a directory, or
// an empty file for a file), recursively, then read-only if asked.
func bind(source, root, path string, readOnly bool) error {
	target, err := securejoin.SecureJoin(root, path)
	if err != nil {
		return err
	}
	info, err := os.Stat(source)
	if err != nil {
		return err
	}
	if info.IsDir() {
		err = os.MkdirAll(target, 0o755)
	} else if err = os.MkdirAll(filepath.Dir(target), 0o755); err == nil {
		var f *os.File
		if f, err = os.OpenFile(target, os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			err = f.Close()
		}
	}
	if err != nil {
		return err
	}
	if err := syscall.Mount(source, target, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
		return err
	}
	if !readOnly {
		return nil
	}
	return syscall.Mount("", target, "", syscall.MS_REMOUNT|syscall.MS_BIND|syscall.MS_RDONLY, "")
}
