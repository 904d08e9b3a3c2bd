// Command second-webhook is a tiny mutating admission webhook for the test
// suite: it stands for another webhook that adds a container to pods after
// ours (as Istio's or Linkerd's injectors do). To every pod it sees without a
// container named "added-later" it adds one (image busybox, `sleep`) with a
// JSONPatch; a pod that has it already gets no patch, so it is idempotent when
// the API server reinvokes it (reinvocationPolicy: IfNeeded).
//
// With --native-proxy NAME it stands for a service mesh's injector instead:
// it appends an init container NAME with restartPolicy: Always (a native
// sidecar, as Istio's istio-proxy or Linkerd's linkerd-proxy) at the end of
// spec.initContainers, after whatever is there (ours included), unless the
// pod has one so named.
//
// With --scc-uid-range MIN/SIZE (the format of OpenShift's namespace
// annotation openshift.io/sa.scc.uid-range) it stands for OpenShift's SCC
// admission with the restricted-v2 SCC instead, which runs after the
// mutating webhooks: each container (and init container) whose effective
// runAsUser is unset gets runAsUser MIN in its securityContext
// (openshift/apiserver-library-go pkg/securitycontextconstraints/user/
// mustrunasrange.go: Generate returns UIDRangeMin; the provider sets it on
// the container), one outside [MIN, MIN+SIZE-1] is refused as its
// ValidateContainer refuses it, and a pod without an fsGroup gets MIN
// (restricted-v2's fsGroup MustRunAs, from the namespace's
// sa.scc.supplemental-groups annotation, which OpenShift gives the same
// range). runAsGroup is left unset, as restricted-v2 does: the runtime then
// runs the uid, absent from the image's /etc/passwd, with group 0.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Added is the name of the container this webhook adds.
const Added = "added-later"

// nativeProxy is --native-proxy: the name of the native sidecar to append
// to spec.initContainers instead ("" adds the Added container).
var nativeProxy string

// sccMin and sccMax are --scc-uid-range's bounds (sccMax 0: not set).
var sccMin, sccMax int64

func main() {
	listen := flag.String("listen", "127.0.0.1:8443", "address to serve HTTPS on")
	cert := flag.String("tls-cert", "", "PEM certificate file (required)")
	key := flag.String("tls-key", "", "PEM private key file (required)")
	flag.StringVar(&nativeProxy, "native-proxy", "", "append a native sidecar init container of this name instead")
	sccRange := flag.String("scc-uid-range", "", "MIN/SIZE: act as OpenShift's restricted-v2 SCC admission instead")
	flag.Parse()
	if *sccRange != "" {
		var size int64
		if _, err := fmt.Sscanf(*sccRange, "%d/%d", &sccMin, &size); err != nil || size < 1 {
			log.Fatalf("--scc-uid-range %q: want MIN/SIZE", *sccRange)
		}
		sccMax = sccMin + size - 1
	}
	if *cert == "" || *key == "" {
		log.Fatal("--tls-cert and --tls-key are required")
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/mutate", serve)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	log.Printf("second-webhook serving https://%s/mutate", *listen)
	log.Fatal(http.ListenAndServeTLS(*listen, *cert, *key, mux))
}

func serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 8<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil || review.Request == nil {
		http.Error(w, fmt.Sprintf("not an AdmissionReview: %v", err), http.StatusBadRequest)
		return
	}
	resp, err := mutate(review.Request)
	if err != nil {
		resp = &admissionv1.AdmissionResponse{
			Allowed: false,
			Result:  &metav1.Status{Message: err.Error(), Code: http.StatusBadRequest},
		}
	}
	resp.UID = review.Request.UID
	review.Response = resp
	review.Request = nil
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(review)
}

// mutate allows every request; a pod without the container gets a patch
// adding it at the end of spec.containers.
func mutate(req *admissionv1.AdmissionRequest) (*admissionv1.AdmissionResponse, error) {
	allowed := &admissionv1.AdmissionResponse{Allowed: true}
	if req.Kind.Kind != "Pod" {
		return allowed, nil
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return nil, fmt.Errorf("not a pod: %w", err)
	}
	if sccMax != 0 {
		return scc(&pod, allowed)
	}
	name, list, path := Added, pod.Spec.Containers, "/spec/containers/-"
	if nativeProxy != "" {
		name, list, path = nativeProxy, pod.Spec.InitContainers, "/spec/initContainers/-"
	}
	for _, c := range list {
		if c.Name == name {
			return allowed, nil
		}
	}
	added := corev1.Container{Name: name, Image: "busybox", Command: []string{"sleep", "infinity"}}
	var value any = added
	if nativeProxy != "" {
		always := corev1.ContainerRestartPolicyAlways
		added.RestartPolicy = &always
		value = added
		if len(list) == 0 {
			// No list to append to: the list itself, with the proxy.
			path, value = "/spec/initContainers", []corev1.Container{added}
		}
	}
	patch, err := json.Marshal([]map[string]any{{"op": "add", "path": path, "value": value}})
	if err != nil {
		return nil, err
	}
	pt := admissionv1.PatchTypeJSONPatch
	allowed.Patch = patch
	allowed.PatchType = &pt
	log.Printf("patched pod %s/%s: added container %s", req.Namespace, pod.Name, name)
	return allowed, nil
}

// scc assigns and checks uids as restricted-v2's MustRunAsRange does (see
// the package comment).
func scc(pod *corev1.Pod, allowed *admissionv1.AdmissionResponse) (*admissionv1.AdmissionResponse, error) {
	var podUID *int64
	if pod.Spec.SecurityContext != nil {
		podUID = pod.Spec.SecurityContext.RunAsUser
	}
	var ops []map[string]any
	for _, l := range []struct {
		name string
		list []corev1.Container
	}{{"initContainers", pod.Spec.InitContainers}, {"containers", pod.Spec.Containers}} {
		for i, c := range l.list {
			uid := podUID
			if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
				uid = c.SecurityContext.RunAsUser
			}
			switch {
			case uid == nil && c.SecurityContext == nil:
				ops = append(ops, map[string]any{"op": "add", "path": fmt.Sprintf("/spec/%s/%d/securityContext", l.name, i),
					"value": map[string]any{"runAsUser": sccMin}})
			case uid == nil:
				ops = append(ops, map[string]any{"op": "add", "path": fmt.Sprintf("/spec/%s/%d/securityContext/runAsUser", l.name, i), "value": sccMin})
			case *uid < sccMin || *uid > sccMax:
				return nil, fmt.Errorf("spec.%s[%d].securityContext.runAsUser: Invalid value: %d: must be in the ranges: [%d, %d]", l.name, i, *uid, sccMin, sccMax)
			}
		}
	}
	switch {
	case pod.Spec.SecurityContext == nil:
		ops = append(ops, map[string]any{"op": "add", "path": "/spec/securityContext", "value": map[string]any{"fsGroup": sccMin}})
	case pod.Spec.SecurityContext.FSGroup == nil:
		ops = append(ops, map[string]any{"op": "add", "path": "/spec/securityContext/fsGroup", "value": sccMin})
	}
	if len(ops) == 0 {
		return allowed, nil
	}
	patch, err := json.Marshal(ops)
	if err != nil {
		return nil, err
	}
	pt := admissionv1.PatchTypeJSONPatch
	allowed.Patch = patch
	allowed.PatchType = &pt
	log.Printf("patched pod %s: %d uid or fsGroup assignments", pod.Name, len(ops))
	return allowed, nil
}
