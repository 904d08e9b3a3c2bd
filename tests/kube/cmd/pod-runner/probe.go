package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"time"

	v1 "k8s.io/api/core/v1"
)

// probe runs a startup probe until it passes, as the kubelet's prober
// (pkg/kubelet/prober/prober.go, worker.go): after initialDelaySeconds,
// every periodSeconds, each try bounded by timeoutSeconds, failing after
// failureThreshold failures in a row. exec runs in the container (as
// `pod-runner exec`); httpGet and tcpSocket go to 127.0.0.1, the pod's IP
// here. No probe: it has passed.
func (r *runner) probe(ctx context.Context, rc *running, p *v1.Probe) error {
	if p == nil {
		return nil
	}
	time.Sleep(time.Duration(p.InitialDelaySeconds) * time.Second)
	period := time.Duration(max(p.PeriodSeconds, 1)) * time.Second
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	var last error
	for failures := int32(0); failures < max(p.FailureThreshold, 1); failures++ {
		select {
		case <-rc.done:
			return fmt.Errorf("the container exited: %v", rc.err)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		try, cancel := context.WithTimeout(ctx, timeout)
		last = r.probeOnce(try, rc, p)
		cancel()
		if last == nil {
			slog.Info("startup probe passed", "container", rc.spec.Name)
			return nil
		}
		time.Sleep(period)
	}
	return last
}

func (r *runner) probeOnce(ctx context.Context, rc *running, p *v1.Probe) error {
	switch {
	case p.Exec != nil:
		self, err := os.Executable()
		if err != nil {
			return err
		}
		args := append([]string{"exec", "--state", r.state, rc.spec.Name, "--"}, p.Exec.Command...)
		out, err := exec.CommandContext(ctx, self, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	case p.HTTPGet != nil:
		scheme := "http"
		if p.HTTPGet.Scheme == v1.URISchemeHTTPS {
			return fmt.Errorf("https probes are not supported by the runner")
		}
		url := fmt.Sprintf("%s://127.0.0.1:%d%s", scheme, p.HTTPGet.Port.IntValue(), p.HTTPGet.Path)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		// pkg/probe/http/http.go: 200 <= status < 400 passes.
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("%s: status %d", url, resp.StatusCode)
		}
		return nil
	case p.TCPSocket != nil:
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p.TCPSocket.Port.IntValue())))
		if err != nil {
			return err
		}
		return conn.Close()
	}
	return fmt.Errorf("the runner supports exec, httpGet and tcpSocket probes")
}
