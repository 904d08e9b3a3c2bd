{{/* The chart's names and labels. */}}
{{- define "kms-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kms-sidecar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "kms-sidecar.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "kms-sidecar.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "kms-sidecar.webhookName" -}}
{{- printf "%s-webhook" (include "kms-sidecar.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kms-sidecar.tlsSecret" -}}
{{- printf "%s-tls" (include "kms-sidecar.webhookName" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kms-sidecar.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "kms-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kms-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end }}

{{- define "kms-sidecar.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "kms-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The sidecar config file, from values. */}}
{{- define "kms-sidecar.sidecarConfig" -}}
{{- toYaml .Values.sidecar.config }}
{{- end }}

{{/* The webhook's own config file (src/webhook/config.rs). */}}
{{- define "kms-sidecar.webhookConfig" -}}
{{- $i := .Values.injection -}}
image: {{ include "kms-sidecar.image" . | quote }}
image_pull_policy: {{ .Values.image.pullPolicy }}
config_map: {{ .Values.sidecar.configMapName }}
sidecar_config: /etc/kms-sidecar/config.yaml
{{- with $i.tokens }}
tokens: {{ toJson . }}
{{- end }}
native_sidecar: {{ $i.nativeSidecar }}
resources: {{ toJson $i.resources }}
socket_mode: {{ $i.socketMode | quote }}
run_as_user: {{ $i.runAsUser }}
socket_per_container: {{ $i.socketPerContainer }}
openshift: {{ $i.openshift }}
probes_port: {{ $i.probesPort }}
kms_ports: {{ toJson $i.kmsPorts }}
token_expiration: {{ $i.tokenExpiration }}
vault_audience: {{ $i.vaultAudience | quote }}
aws:
  role_arn: {{ $i.aws.roleArn | default nil | toJson }}
azure:
  client_id: {{ $i.azure.clientId | default nil | toJson }}
  tenant_id: {{ $i.azure.tenantId | default nil | toJson }}
  authority_host: {{ $i.azure.authorityHost | quote }}
gcp:
  audience: {{ $i.gcp.audience | default nil | toJson }}
  credentials_config_map: {{ $i.gcp.credentialsConfigMap | quote }}
failure_policy: {{ .Values.webhook.failurePolicy | lower }}
check_config_maps: {{ .Values.webhook.checkConfigMaps }}
log: { level: {{ .Values.webhook.logLevel }}, format: json }
{{- end }}

{{/* Refuses native sidecars on a cluster that has none (before 1.29): the
sidecar would be an init container that never exits, so pods would stay in
Init. The version is the cluster's, or `helm template --kube-version`. */}}
{{- define "kms-sidecar.requireNativeSidecars" -}}
{{- $version := .Capabilities.KubeVersion.Version }}
{{- if and .Values.injection.nativeSidecar (semverCompare "<1.29.0-0" $version) }}
{{- fail (printf "injection.nativeSidecar=true needs Kubernetes 1.29 or later (native sidecar containers), and this cluster is %s: the sidecar would never exit and pods would stay in Init. Set injection.nativeSidecar=false to inject a regular container." $version) }}
{{- end }}
{{- end }}

{{/* The webhook's serving Certificate (cert-manager), issued by issuerRef;
root is the chart's context, dns the Service's names. */}}
{{- define "kms-sidecar.servingCertificate" -}}
{{- $ := .root }}
{{- $service := include "kms-sidecar.webhookName" $ }}
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: {{ $service }}
  namespace: {{ $.Release.Namespace }}
  labels:
    {{- include "kms-sidecar.labels" $ | nindent 4 }}
spec:
  secretName: {{ include "kms-sidecar.tlsSecret" $ }}
  commonName: {{ printf "%s.%s.svc" $service $.Release.Namespace }}
  dnsNames:
    {{- toYaml .dns | nindent 4 }}
  {{- with .ips }}
  ipAddresses:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  duration: {{ $.Values.tls.certManager.duration }}
  renewBefore: {{ $.Values.tls.certManager.renewBefore }}
  privateKey:
    algorithm: ECDSA
    size: 256
    rotationPolicy: Always
  issuerRef:
    {{- toYaml .issuerRef | nindent 4 }}
---
{{- end }}
