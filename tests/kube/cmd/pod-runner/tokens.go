package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The kubelet's constants (pkg/kubelet/token/token_manager.go).
const (
	maxTTL    = 24 * time.Hour
	maxJitter = 10 * time.Second
)

// tokenManager is the kubelet's token manager for one pod
// (pkg/kubelet/token/token_manager.go): a token per (service account,
// audience, expirationSeconds, bound pod), asked of the TokenRequest API
// and cached until it requires a refresh.
type tokenManager struct {
	client kubernetes.Interface
	pod    *v1.Pod
	// compressed, when not zero, is the DEVIATION --compressed-token-life:
	// a token is refreshed at 80 % of this life instead of its real one.
	compressed time.Duration
	cache      map[string]*authenticationv1.TokenRequest
}

func newTokenManager(client kubernetes.Interface, pod *v1.Pod, compressed time.Duration) *tokenManager {
	return &tokenManager{client: client, pod: pod, compressed: compressed, cache: map[string]*authenticationv1.TokenRequest{}}
}

// token returns the projection's token, asking for a new one when there is
// none yet or the cached one requires a refresh. The request is the one
// pkg/volume/projected/projected.go (collectData) makes: the pod's service
// account, the projection's audience (none: the API server's own) and
// expirationSeconds, bound to the pod by name and uid.
func (m *tokenManager) token(ctx context.Context, tp *v1.ServiceAccountTokenProjection) (string, error) {
	key := fmt.Sprintf("%q/%q/%d", m.pod.Spec.ServiceAccountName, tp.Audience, *tp.ExpirationSeconds)
	if tr, ok := m.cache[key]; ok && !m.requiresRefresh(tr, time.Now()) {
		return tr.Status.Token, nil
	}
	var auds []string
	if len(tp.Audience) != 0 {
		auds = []string{tp.Audience}
	}
	tr, err := m.client.CoreV1().ServiceAccounts(m.pod.Namespace).CreateToken(ctx, m.pod.Spec.ServiceAccountName, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences:         auds,
			ExpirationSeconds: tp.ExpirationSeconds,
			BoundObjectRef: &authenticationv1.BoundObjectReference{
				APIVersion: "v1", Kind: "Pod", Name: m.pod.Name, UID: m.pod.UID,
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	m.cache[key] = tr
	m.logIssued(tp, tr)
	return tr.Status.Token, nil
}

// requiresRefresh is the kubelet's rule (token_manager.go, requiresRefresh):
// refresh when older than 24 h or within 20 % of its life (minus a jitter
// of up to 10 s) of its expiry, its issue time taken as the expiry minus
// the requested expirationSeconds. With --compressed-token-life, the life
// is that flag's instead (and no jitter): the DEVIATION that lets a test
// see refreshes of tokens the API server will not issue for less than
// 10 minutes.
func (m *tokenManager) requiresRefresh(tr *authenticationv1.TokenRequest, now time.Time) bool {
	exp := tr.Status.ExpirationTimestamp.Time
	iat := exp.Add(-time.Duration(*tr.Spec.ExpirationSeconds) * time.Second)
	if m.compressed > 0 {
		return now.After(iat.Add(m.compressed * 80 / 100))
	}
	jitter := time.Duration(rand.Float64()*maxJitter.Seconds()) * time.Second
	if now.After(iat.Add(maxTTL - jitter)) {
		return true
	}
	return now.After(exp.Add(-time.Duration((*tr.Spec.ExpirationSeconds*20)/100)*time.Second - jitter))
}

// logIssued says what was issued and when it will be refreshed, never the
// token: its `jti` (the API server's credential id) tells tokens apart.
func (m *tokenManager) logIssued(tp *v1.ServiceAccountTokenProjection, tr *authenticationv1.TokenRequest) {
	exp := tr.Status.ExpirationTimestamp.Time
	life := time.Duration(*tr.Spec.ExpirationSeconds) * time.Second
	iat := exp.Add(-life)
	rule, from, by := "kubelet", exp.Add(-life/5-maxJitter), exp.Add(-life/5)
	if m.compressed > 0 {
		rule = "compressed"
		from = iat.Add(m.compressed * 80 / 100)
		by = from
	}
	slog.Info("token issued",
		"pod", m.pod.Name, "path", tp.Path, "audience", tp.Audience,
		"jti", claim(tr.Status.Token, "jti"),
		"expiration_seconds", *tr.Spec.ExpirationSeconds,
		"issued_at", iat.Unix(), "expires_at", exp.Unix(),
		"refresh_rule", rule, "refresh_from", from.Unix(), "refresh_by", by.Unix())
}

// claim is a string claim of a JWT's payload (not verified: for logs only).
func claim(token, name string) string {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return ""
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return ""
	}
	var claims map[string]any
	if json.Unmarshal(payload, &claims) != nil {
		return ""
	}
	s, _ := claims[name].(string)
	return s
}
