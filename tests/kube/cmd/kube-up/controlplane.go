package main

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// controlPlane is what a client needs: the API server's URL, its CA, the
// admin's token and kubeconfig.
type controlPlane struct {
	dir, binDir string
	url         string
	ca          string
	token       string
	tokenFile   string
	kubeconfig  string
	client      *http.Client
}

// startControlPlane starts etcd, kube-apiserver and (o.controllerManager)
// kube-controller-manager, and returns once /readyz says ok, anyone may
// read the OIDC discovery, and the controller manager has made the default
// namespace's ServiceAccount.
func startControlPlane(s *supervisor, o options) (*controlPlane, error) {
	d := o.dir
	if err := writeCerts(d); err != nil {
		return nil, err
	}
	token := make([]byte, 16)
	if _, err := rand.Read(token); err != nil {
		return nil, err
	}
	cp := &controlPlane{
		dir: d, binDir: o.binDir,
		ca:         filepath.Join(d, "ca.crt"),
		token:      "admin-" + hex.EncodeToString(token),
		tokenFile:  filepath.Join(d, "token"),
		kubeconfig: filepath.Join(d, "kubeconfig"),
	}
	// The admin: a static token in system:masters (--token-auth-file).
	if err := os.WriteFile(cp.tokenFile, []byte(cp.token), 0o600); err != nil {
		return nil, err
	}
	csv := fmt.Sprintf("%s,admin,admin,\"system:masters\"\n", cp.token)
	if err := os.WriteFile(filepath.Join(d, "tokens.csv"), []byte(csv), 0o600); err != nil {
		return nil, err
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", freePort())
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", freePort())
	if _, err := s.start("etcd", filepath.Join(o.binDir, "etcd"), []string{
		"--data-dir=" + filepath.Join(d, "etcd"),
		"--listen-client-url=" + etcdURL,
		"--listen-peer-url=" + peerURL,
	}, nil, true); err != nil {
		return nil, err
	}
	port := freePort()
	cp.url = fmt.Sprintf("https://127.0.0.1:%d", port)
	args := append(apiserverArgs(d, port, etcdURL), o.apiserverArgs...)
	if _, err := s.start("kube-apiserver", filepath.Join(o.binDir, "kube-apiserver"), args, nil, true); err != nil {
		return nil, err
	}
	if err := cp.connect(); err != nil {
		return nil, err
	}
	if err := s.poll("kube-apiserver's /readyz", 90*time.Second, func() bool {
		status, body := cp.get("/readyz")
		return status == 200 && strings.TrimSpace(body) == "ok"
	}); err != nil {
		return nil, err
	}
	if _, err := cp.kubectl(discoveryPublic, "apply", "-f", "-"); err != nil {
		return nil, err
	}
	if o.controllerManager {
		if err := cp.startControllerManager(s); err != nil {
			return nil, err
		}
	}
	return cp, nil
}

// apiserverArgs are the API server's flags: loopback only, its own etcd,
// TLS with the run's CA, token and anonymous authentication, RBAC, the
// admission plugins the suite relies on, and a service-account issuer at its
// own URL (so the discovery document's jwks_uri is on this server).
func apiserverArgs(d string, port int, etcdURL string) []string {
	return []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
		"--cert-dir=" + filepath.Join(d, "apiserver-certs"),
		"--tls-cert-file=" + filepath.Join(d, "apiserver.crt"),
		"--tls-private-key-file=" + filepath.Join(d, "apiserver.key"),
		"--token-auth-file=" + filepath.Join(d, "tokens.csv"),
		"--anonymous-auth=true",
		"--authorization-mode=RBAC",
		"--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook,PodSecurity,ServiceAccount",
		fmt.Sprintf("--service-account-issuer=https://127.0.0.1:%d", port),
		"--service-account-signing-key-file=" + filepath.Join(d, "service-account.key"),
		"--service-account-key-file=" + filepath.Join(d, "service-account.key"),
		"--service-cluster-ip-range=10.0.0.0/24",
		// The `kubernetes` Service's endpoints may not be a loopback address.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
		"--v=1",
	}
}

// The controllers the suite needs (names from
// cmd/kube-controller-manager/names/controller_names.go): Deployments make
// ReplicaSets, ReplicaSets make Pods, each namespace gets its `default`
// ServiceAccount and `kube-root-ca.crt` ConfigMap (the kubelet mounts it in
// every pod's kube-api-access volume), deleted namespaces are emptied, and
// owned objects collected.
var controllers = []string{
	"deployment-controller",
	"replicaset-controller",
	"serviceaccount-controller",
	"root-ca-certificate-publisher-controller",
	"namespace-controller",
	"garbage-collector-controller",
}

// startControllerManager starts it with the admin's kubeconfig, no leader
// election and no serving port (--secure-port=0 skips its authentication
// and authorization set-up, cmd/kube-controller-manager/app/options/options.go),
// and waits until the default namespace has its ServiceAccount.
func (cp *controlPlane) startControllerManager(s *supervisor) error {
	if _, err := s.start("kube-controller-manager", filepath.Join(cp.binDir, "kube-controller-manager"), []string{
		"--kubeconfig=" + cp.kubeconfig,
		"--controllers=" + strings.Join(controllers, ","),
		"--root-ca-file=" + cp.ca,
		"--leader-elect=false",
		"--secure-port=0",
		"--v=1",
	}, nil, true); err != nil {
		return err
	}
	return s.poll("the controller manager's default ServiceAccount", 60*time.Second, func() bool {
		status, _ := cp.get("/api/v1/namespaces/default/serviceaccounts/default")
		return status == 200
	})
}

// connect writes the kubeconfig (the CA inline, so it can be copied) and
// makes the HTTP client that trusts the run's CA.
func (cp *controlPlane) connect() error {
	pem, err := os.ReadFile(cp.ca)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("%s: no certificate", cp.ca)
	}
	cp.client = &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	config := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: kube-up
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: kube-up
  context:
    cluster: kube-up
    user: admin
current-context: kube-up
`, cp.url, base64.StdEncoding.EncodeToString(pem), cp.token)
	return os.WriteFile(cp.kubeconfig, []byte(config), 0o600)
}

// get is a GET as the admin: the status (0 when nothing answered) and body.
func (cp *controlPlane) get(path string) (int, string) {
	req, err := http.NewRequest(http.MethodGet, cp.url+path, nil)
	if err != nil {
		return 0, err.Error()
	}
	req.Header.Set("Authorization", "Bearer "+cp.token)
	resp, err := cp.client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// kubectl runs DIR/bin/kubectl as the admin with stdin; its stdout, or an
// error with its stderr.
func (cp *controlPlane) kubectl(stdin string, args ...string) (string, error) {
	all := append([]string{"--kubeconfig", cp.kubeconfig, "--cache-dir", filepath.Join(cp.dir, "kubectl-cache")}, args...)
	cmd := exec.Command(filepath.Join(cp.binDir, "kubectl"), all...)
	cmd.Env = withoutEnv("KUBECONFIG")
	cmd.Stdin = strings.NewReader(stdin)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

// withoutEnv is this process's environment without the named variables.
func withoutEnv(names ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		keep := true
		for _, n := range names {
			if strings.HasPrefix(kv, n+"=") {
				keep = false
			}
		}
		if keep {
			env = append(env, kv)
		}
	}
	return env
}

// freePort is a loopback port nothing listens on now.
func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// discoveryPublic binds system:service-account-issuer-discovery (the
// bootstrap role that may GET the discovery document and the JWKS) to
// unauthenticated users too, as Kubernetes' documentation says to for a
// public issuer (OpenBao's jwt auth or any outside verifier reads it).
const discoveryPublic = `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: service-account-issuer-discovery-public
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:service-account-issuer-discovery
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: system:unauthenticated
`
