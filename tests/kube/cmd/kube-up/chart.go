package main

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// installChart installs the chart with the real `helm install`, its
// webhook's clientConfig pointed at https://127.0.0.1:PORT/mutate (the
// chart's webhook.url: no Service routes to this machine), then runs the
// webhook binary as the chart's Deployment would (its args, its ConfigMap
// and Secret volumes as files, its ServiceAccount's token), and waits until
// the API server calls it. Returns the webhook's URL.
func installChart(s *supervisor, o options, cp *controlPlane) (string, error) {
	port := freePort()
	url := fmt.Sprintf("https://127.0.0.1:%d/mutate", port)
	values := fmt.Sprintf("# Written by kube-up: the webhook runs on this machine.\nwebhook:\n  url: %s\n", url)
	if o.appNamespace != "" {
		if err := cp.namespace(o.appNamespace, o.controllerManager); err != nil {
			return "", err
		}
		values += fmt.Sprintf("sidecar:\n  namespaces: [%q]\n", o.appNamespace)
	}
	valuesFile := filepath.Join(o.dir, "kube-up-values.yaml")
	if err := os.WriteFile(valuesFile, []byte(values), 0o644); err != nil {
		return "", err
	}
	// kube-up's values first: the caller's --helm-arg values win.
	args := append([]string{"install", o.release, o.chart, "-n", o.namespace, "--create-namespace",
		"--values", valuesFile}, o.helmArgs...)
	if out, err := cp.helm(args...); err != nil {
		return "", fmt.Errorf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if o.appNamespace != "" {
		if err := cp.labelLikeSelector(o); err != nil {
			return "", err
		}
	}
	if err := cp.startWebhook(s, o, port); err != nil {
		return "", err
	}
	if o.appNamespace == "" {
		return url, nil
	}
	probe := fmt.Sprintf("apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-up-probe\n  namespace: %s\n  labels: { kms-sidecar.io/inject: \"true\" }\nspec:\n  containers: [{ name: c, image: busybox }]\n", o.appNamespace)
	return url, s.poll("the API server calling the webhook", 60*time.Second, func() bool {
		out, err := cp.kubectl(probe, "create", "--dry-run=server", "-o", "json", "-f", "-")
		said := out
		if err != nil {
			said += err.Error()
		}
		// Injected, or refused or warned by the webhook itself (not
		// "failed calling webhook").
		return strings.Contains(said, "kms-sidecar.io/status") || strings.Contains(said, "denied the request")
	})
}

// namespace creates a namespace; without the controller manager, also its
// default ServiceAccount (the ServiceAccount admission plugin refuses pods
// without it).
func (cp *controlPlane) namespace(name string, controllerManager bool) error {
	yaml := fmt.Sprintf("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n", name)
	if !controllerManager {
		yaml += fmt.Sprintf("---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: default\n  namespace: %s\n", name)
	}
	_, err := cp.kubectl(yaml, "apply", "-f", "-")
	return err
}

// labelLikeSelector gives the app namespace the labels of the chart's
// namespaceSelector (webhook.namespaceLabels), so its pods are injected.
func (cp *controlPlane) labelLikeSelector(o options) error {
	out, err := cp.kubectl("", "get", "mutatingwebhookconfigurations", "-l", "app.kubernetes.io/instance="+o.release, "-o", "json")
	if err != nil {
		return err
	}
	var list struct {
		Items []struct {
			Webhooks []struct {
				NamespaceSelector struct {
					MatchLabels map[string]string `json:"matchLabels"`
				} `json:"namespaceSelector"`
			} `json:"webhooks"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Items) != 1 || len(list.Items[0].Webhooks) == 0 {
		return fmt.Errorf("the release's MutatingWebhookConfiguration: %v: %s", err, out)
	}
	args := []string{"label", "namespace", o.appNamespace, "--overwrite"}
	for k, v := range list.Items[0].Webhooks[0].NamespaceSelector.MatchLabels {
		args = append(args, k+"="+v)
	}
	if len(args) == 4 {
		return nil
	}
	_, err = cp.kubectl("", args...)
	return err
}

// helm runs DIR/bin/helm as the admin, its config, cache and data in DIR/helm.
func (cp *controlPlane) helm(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(cp.binDir, "helm"), append([]string{"--kubeconfig", cp.kubeconfig}, args...)...)
	env := withoutEnv("KUBECONFIG")
	for i := 0; i < len(env); i++ {
		if strings.HasPrefix(env[i], "HELM_") {
			env = append(env[:i], env[i+1:]...)
			i--
		}
	}
	home := filepath.Join(cp.dir, "helm")
	cmd.Env = append(env, "HELM_CONFIG_HOME="+home+"/config", "HELM_CACHE_HOME="+home+"/cache", "HELM_DATA_HOME="+home+"/data")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// A Deployment's pod template, as much of it as startWebhook reads.
type podTemplate struct {
	ServiceAccountName           string `json:"serviceAccountName"`
	AutomountServiceAccountToken *bool  `json:"automountServiceAccountToken"`
	Containers                   []struct {
		Args         []string `json:"args"`
		VolumeMounts []struct {
			Name      string `json:"name"`
			MountPath string `json:"mountPath"`
		} `json:"volumeMounts"`
	} `json:"containers"`
	Volumes []struct {
		Name      string                 `json:"name"`
		ConfigMap *struct{ Name string } `json:"configMap"`
		Secret    *struct {
			SecretName string `json:"secretName"`
		} `json:"secret"`
	} `json:"volumes"`
}

// startWebhook runs the webhook binary as the release's Deployment says:
// its container's args, each ConfigMap or Secret volume written to
// DIR/webhook/VOLUME/ and its mount path in the args and in those files
// replaced by that directory, --listen on 127.0.0.1:port, and the API
// credentials of its ServiceAccount (a token from the TokenRequest API in
// DIR/webhook/kubeconfig) when the Deployment mounts that token.
func (cp *controlPlane) startWebhook(s *supervisor, o options, port int) error {
	out, err := cp.kubectl("", "-n", o.namespace, "get", "deployments", "-l",
		"app.kubernetes.io/instance="+o.release+",app.kubernetes.io/component=webhook", "-o", "json")
	if err != nil {
		return err
	}
	var list struct {
		Items []struct {
			Spec struct {
				Template struct {
					Spec podTemplate `json:"spec"`
				} `json:"template"`
			} `json:"spec"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Items) != 1 {
		return fmt.Errorf("the release's webhook Deployment: %v: %s", err, out)
	}
	pod := list.Items[0].Spec.Template.Spec
	if len(pod.Containers) != 1 {
		return fmt.Errorf("the webhook Deployment has %d containers", len(pod.Containers))
	}
	root := filepath.Join(cp.dir, "webhook")
	paths := map[string]string{} // mount path -> local directory
	for _, m := range pod.Containers[0].VolumeMounts {
		paths[m.MountPath] = filepath.Join(root, m.Name)
	}
	for _, v := range pod.Volumes {
		if err := cp.materialise(o.namespace, v.Name, v.ConfigMap, v.Secret, filepath.Join(root, v.Name), paths); err != nil {
			return err
		}
	}
	var args []string
	for _, a := range pod.Containers[0].Args {
		if strings.HasPrefix(a, "--listen=") {
			a = fmt.Sprintf("--listen=127.0.0.1:%d", port)
		}
		args = append(args, relocate(a, paths))
	}
	kubeconfig := "/nonexistent/kubeconfig" // no token mounted: no API access
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		if kubeconfig, err = cp.serviceAccountKubeconfig(o.namespace, pod.ServiceAccountName, root); err != nil {
			return err
		}
	}
	if _, err := s.start("webhook", o.webhook, args, []string{"KUBECONFIG=" + kubeconfig}, false); err != nil {
		return err
	}
	return s.poll("the webhook's /healthz", 30*time.Second, func() bool {
		resp, err := insecure.Get(fmt.Sprintf("https://127.0.0.1:%d/healthz", port))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// insecure asks the webhook whether it is up; whether the API server
// trusts its certificate is what the probe of installChart finds out.
var insecure = &http.Client{
	Timeout:   2 * time.Second,
	Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
}

// materialise writes a ConfigMap or Secret volume's keys as files in dir,
// with the mount paths in their text relocated (the webhook's config names
// the sidecar config's path).
func (cp *controlPlane) materialise(ns, name string, cm *struct{ Name string }, secret *struct {
	SecretName string `json:"secretName"`
}, dir string, paths map[string]string) error {
	var kind, object string
	switch {
	case cm != nil:
		kind, object = "configmap", cm.Name
	case secret != nil:
		kind, object = "secret", secret.SecretName
	default:
		return fmt.Errorf("volume %s: only configMap and secret volumes are materialised", name)
	}
	out, err := cp.kubectl("", "-n", ns, "get", kind, object, "-o", "json")
	if err != nil {
		return err
	}
	var obj struct{ Data map[string]string }
	if err := json.Unmarshal([]byte(out), &obj); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for key, value := range obj.Data {
		data := []byte(value)
		if kind == "secret" {
			if data, err = base64.StdEncoding.DecodeString(value); err != nil {
				return fmt.Errorf("secret %s/%s: %v", ns, object, err)
			}
		} else {
			data = []byte(relocate(value, paths))
		}
		if err := os.WriteFile(filepath.Join(dir, key), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// relocate replaces each mount path (followed by "/") with its local
// directory, the longest first (a mount inside another).
func relocate(text string, paths map[string]string) string {
	mounts := make([]string, 0, len(paths))
	for m := range paths {
		mounts = append(mounts, m)
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, m := range mounts {
		text = strings.ReplaceAll(text, strings.TrimSuffix(m, "/")+"/", paths[m]+"/")
	}
	return text
}

// serviceAccountKubeconfig writes DIR/webhook/kubeconfig with a token of the
// ServiceAccount from the TokenRequest API, as the kubelet would mount it
// (here for a week: kube-up does not refresh it).
func (cp *controlPlane) serviceAccountKubeconfig(ns, sa, root string) (string, error) {
	token, err := cp.kubectl("", "-n", ns, "create", "token", sa, "--duration=168h")
	if err != nil {
		return "", err
	}
	ca, err := os.ReadFile(cp.ca)
	if err != nil {
		return "", err
	}
	path := filepath.Join(root, "kubeconfig")
	config := fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters:\n- name: kube-up\n  cluster: { server: %q, certificate-authority-data: %s }\nusers:\n- name: %s\n  user: { token: %s }\ncontexts:\n- name: kube-up\n  context: { cluster: kube-up, user: %s }\ncurrent-context: kube-up\n",
		cp.url, base64.StdEncoding.EncodeToString(ca), sa, strings.TrimSpace(token), sa)
	return path, os.WriteFile(path, []byte(config), 0o600)
}
