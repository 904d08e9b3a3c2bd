package main

import (
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// proc is one long-running child: etcd, kube-apiserver,
// kube-controller-manager or the webhook.
type proc struct {
	name string
	cmd  *exec.Cmd
	// core: when it exits, kube-up stops everything (the webhook is not:
	// with it gone the API server applies the chart's failurePolicy, which
	// is worth seeing).
	core bool
	done chan struct{}
	err  error
}

// exited says whether the process has ended, and how.
func (p *proc) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

type supervisor struct {
	dir    string
	stop   chan os.Signal
	procs  []*proc
	exited chan *proc
}

// start runs bin with args, its output in DIR/NAME.log, in its own process
// group (a terminal's Ctrl-C reaches kube-up, which stops the children in
// order), killed if kube-up dies first.
func (s *supervisor) start(name, bin string, args, env []string, core bool) (*proc, error) {
	if s.exited == nil {
		s.exited = make(chan *proc, 16)
	}
	out, err := os.Create(filepath.Join(s.dir, name+".log"))
	if err != nil {
		return nil, err
	}
	defer out.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w (run tests/kube/build.sh)", name, err)
	}
	p := &proc{name: name, cmd: cmd, core: core, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
		s.exited <- p
	}()
	s.procs = append(s.procs, p)
	return p, nil
}

// check fails when a process has exited, with the end of its log.
func (s *supervisor) check() error {
	for _, p := range s.procs {
		if gone, err := p.exited(); gone {
			return fmt.Errorf("%s exited (%v); the end of %s.log:\n%s", p.name, err, p.name, tail(s.dir, p.name))
		}
	}
	return nil
}

// poll calls ready every 200 ms until it says true, a process exits, or
// the time is up.
func (s *supervisor) poll(what string, within time.Duration, ready func() bool) error {
	deadline := time.Now().Add(within)
	for {
		if ready() {
			return nil
		}
		if err := s.check(); err != nil {
			return err
		}
		select {
		case sig := <-s.stop:
			return fmt.Errorf("%v while waiting for %s", sig, what)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not in %v", what, within)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// wait blocks until a signal (exit code 0) or the end of a core process (1).
func (s *supervisor) wait() int {
	for {
		select {
		case sig := <-s.stop:
			log.Printf("kube-up: %v: stopping", sig)
			return 0
		case p := <-s.exited:
			if p.core {
				log.Printf("kube-up: %s exited (%v): stopping; the end of its log:\n%s", p.name, p.err, tail(s.dir, p.name))
				return 1
			}
			log.Printf("kube-up: %s exited (%v); the API server now applies the webhook's failurePolicy", p.name, p.err)
		}
	}
}

// shutdown stops the children in the reverse order of their start:
// SIGTERM, then SIGKILL after 10 s.
func (s *supervisor) shutdown() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		p := s.procs[i]
		if gone, _ := p.exited(); gone {
			continue
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	_ = os.Remove(filepath.Join(s.dir, "env"))
}

// writePids writes DIR/pids: "NAME PID" a line, for whoever checks that
// kube-up left nothing running.
func (s *supervisor) writePids() error {
	var b strings.Builder
	fmt.Fprintf(&b, "kube-up %d\n", os.Getpid())
	for _, p := range s.procs {
		fmt.Fprintf(&b, "%s %d\n", p.name, p.cmd.Process.Pid)
	}
	return writeAtomic(filepath.Join(s.dir, "pids"), b.String(), 0o644)
}

// tail is the end of DIR/NAME.log.
func tail(dir, name string) string {
	text, _ := os.ReadFile(filepath.Join(dir, name+".log"))
	if len(text) > 6000 {
		text = text[len(text)-6000:]
	}
	return string(text)
}
