// Command kube-up runs the test suite's Kubernetes control plane in the
// foreground: etcd (cmd/etcd), kube-apiserver and, unless told not to,
// kube-controller-manager, all built by build.sh into the directory this
// binary is in; with --chart, the Helm chart installed by the real `helm
// install` and the webhook binary (--webhook) serving the chart's
// certificate on 127.0.0.1. It writes DIR/kubeconfig, DIR/bin/kubectl,
// DIR/bin/helm, the logs (DIR/NAME.log), DIR/pids, and last DIR/env, whose
// presence says that everything is ready. SIGINT or SIGTERM (and, with
// --stop-on-stdin-eof, the end of its standard input) stops everything it
// started and removes DIR/env.
//
// `make kube-up` runs it for people; the Rust harness
// (tests/it/harness/kube.rs) runs it for each test, so the control plane's
// flags and start-up live here only. Test infrastructure only.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, " ") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

type options struct {
	dir               string
	binDir            string
	controllerManager bool
	apiserverArgs     list
	chart             string
	release           string
	namespace         string
	appNamespace      string
	helmArgs          list
	webhook           string
	stopOnStdinEOF    bool
}

func parseFlags() options {
	self, err := os.Executable()
	if err != nil {
		log.Fatalf("kube-up: %v", err)
	}
	var o options
	flag.StringVar(&o.dir, "dir", "", "directory for the state, logs, kubeconfig and env (required)")
	flag.StringVar(&o.binDir, "bin-dir", filepath.Dir(self), "where build.sh put etcd, kube-apiserver, kube-controller-manager, kubectl and helm")
	flag.BoolVar(&o.controllerManager, "controller-manager", true, "start kube-controller-manager (Deployments, ReplicaSets, default ServiceAccounts)")
	flag.Var(&o.apiserverArgs, "apiserver-arg", "one more kube-apiserver flag, --name=value (repeatable; a later one wins)")
	flag.StringVar(&o.chart, "chart", "", "the Helm chart to install (charts/kms-sidecar); none: no chart, no webhook")
	flag.StringVar(&o.release, "release", "kms-sidecar", "the Helm release name")
	flag.StringVar(&o.namespace, "namespace", "kms-system", "the release's namespace")
	flag.StringVar(&o.appNamespace, "app-namespace", "apps", "a namespace made for apps: given the sidecar's ConfigMap (sidecar.namespaces) and the chart's webhook.namespaceLabels; empty: none")
	flag.Var(&o.helmArgs, "helm-arg", "one more `helm install` argument, e.g. --values=FILE or --set=K=V (repeatable)")
	flag.StringVar(&o.webhook, "webhook", "", "the kms-sidecar binary run as the webhook (with --chart)")
	flag.BoolVar(&o.stopOnStdinEOF, "stop-on-stdin-eof", false, "stop when standard input closes (a test harness that dies takes the control plane with it)")
	flag.Parse()
	if o.dir == "" {
		log.Fatal("kube-up: --dir is required")
	}
	if (o.chart == "") != (o.webhook == "") {
		log.Fatal("kube-up: --chart and --webhook go together")
	}
	if o.dir, err = filepath.Abs(o.dir); err != nil {
		log.Fatalf("kube-up: %v", err)
	}
	return o
}

func main() {
	// Children get SIGKILL when the thread that started them ends
	// (Pdeathsig): all are started from this goroutine, locked to its thread.
	runtime.LockOSThread()
	log.SetFlags(0)
	o := parseFlags()
	t0 := time.Now()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	if o.stopOnStdinEOF {
		go func() {
			buf := make([]byte, 512)
			for {
				if _, err := os.Stdin.Read(buf); err != nil {
					stop <- syscall.SIGTERM
					return
				}
			}
		}()
	}

	s := &supervisor{dir: o.dir, stop: stop}
	err := up(s, o)
	if err != nil {
		s.shutdown()
		log.Fatalf("kube-up: %v", err)
	}
	log.Printf("kube-up: ready in %.1fs; set -a; . %s; set +a; then kubectl get pods -A (kubectl: %s)",
		time.Since(t0).Seconds(), filepath.Join(o.dir, "env"), filepath.Join(o.dir, "bin", "kubectl"))
	code := s.wait()
	s.shutdown()
	os.Exit(code)
}

// up starts everything and writes DIR/env last.
func up(s *supervisor, o options) error {
	if err := prepare(o); err != nil {
		return err
	}
	cp, err := startControlPlane(s, o)
	if err != nil {
		return err
	}
	// No KMS_SIDECAR_ names: those are config overrides to the binary.
	env := [][2]string{
		{"KUBECONFIG", cp.kubeconfig},
		{"KUBE_API_URL", cp.url},
		{"KUBE_CA", cp.ca},
		{"KUBE_TOKEN_FILE", cp.tokenFile},
		{"KUBE_BIN", filepath.Join(o.dir, "bin")},
	}
	if o.chart != "" {
		url, err := installChart(s, o, cp)
		if err != nil {
			return err
		}
		env = append(env, [2]string{"KUBE_WEBHOOK_URL", url})
	}
	if err := s.writePids(); err != nil {
		return err
	}
	var b strings.Builder
	for _, kv := range env {
		fmt.Fprintf(&b, "%s=%s\n", kv[0], kv[1])
	}
	return writeAtomic(filepath.Join(o.dir, "env"), b.String(), 0o644)
}

// prepare empties DIR of a previous run's state (each run is a new
// cluster) and links DIR/bin/kubectl and DIR/bin/helm.
func prepare(o options) error {
	for _, stale := range []string{"env", "pids", "etcd", "webhook", "helm", "kubectl-cache"} {
		if err := os.RemoveAll(filepath.Join(o.dir, stale)); err != nil {
			return err
		}
	}
	bin := filepath.Join(o.dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return err
	}
	for _, name := range []string{"kubectl", "helm"} {
		link := filepath.Join(bin, name)
		_ = os.Remove(link)
		if err := os.Symlink(filepath.Join(o.binDir, name), link); err != nil {
			return err
		}
	}
	return nil
}

// writeAtomic writes a file whole or not at all (a reader polls for it).
func writeAtomic(path, text string, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
