package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"
)

// initContainer runs in the container's new mount namespace (the runner
// started it with CLONE_NEWNS), as root, and becomes the container:
//
//  1. a tmpfs at spec.Root, and in it an overlay whose lower layer is this
//     machine's root: the container's root, copy-on-write, so that mount
//     points and the image's files are made there and never on this
//     machine (nothing the container writes outside its volumes stays);
//  2. /dev, /proc and /sys bound into it (there is no PID or network
//     namespace: the container sees this machine's processes and network);
//  3. the image's entrypoint: the local binary bound at its path;
//  4. the volumes bound at the spec's paths, read-only where it says;
//  5. the root itself read-only under `readOnlyRootFilesystem`;
//  6. chroot there, then setpriv to the container's uid, gid and groups
//     (and no_new_privs under `allowPrivilegeEscalation: false`), which
//     runs the command with the container's environment.
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
	for _, dir := range []string{"/dev", "/proc", "/sys"} {
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
	return syscall.Exec(argv[0], argv, s.Env)
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
