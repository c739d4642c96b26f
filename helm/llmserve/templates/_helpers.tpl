{{- define "llmserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llmserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "llmserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "llmserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "llmserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- /*
Labels of the conversion Job and the test pod: without app.kubernetes.io/name, so the server's
Services, PodDisruptionBudget and Deployment selectors never match them.
Context: dict "root" $ "component" <name>.
*/ -}}
{{- define "llmserve.auxiliaryLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: {{ include "llmserve.name" .root }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{- define "llmserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llmserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "llmserve.imageTag" -}}
{{- $flavor := ternary "cuda" "cpu" (gt (int .Values.gpu.count) 0) }}
{{- default (printf "%s-%s" .Chart.AppVersion $flavor) .Values.image.tag }}
{{- end }}

{{- define "llmserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "llmserve.imageTag" .) }}
{{- end }}

{{- define "llmserve.claimName" -}}
{{- if .Values.model.pvc.existingClaim }}
{{- .Values.model.pvc.existingClaim }}
{{- else if .Values.model.pvc.create }}
{{- printf "%s-model" (include "llmserve.fullname" .) }}
{{- else }}
{{- fail "model.pvc.existingClaim is empty and model.pvc.create is false: name the PersistentVolumeClaim that holds the model, or set model.pvc.create=true" }}
{{- end }}
{{- end }}

{{- define "llmserve.modelDir" -}}
{{- trimSuffix "/" (printf "%s/%s" .Values.model.mountPath .Values.model.path) }}
{{- end }}

{{- define "llmserve.apiKeySecretName" -}}
{{- default (printf "%s-api-key" (include "llmserve.fullname" .)) .Values.apiKey.existingSecret }}
{{- end }}

{{- /* Where KServe mounts the storageUri. */ -}}
{{- define "llmserve.kserveModelDir" -}}/mnt/models{{- end }}

{{- define "llmserve.terminationGracePeriodSeconds" -}}
{{- $drain := add .Values.server.preStopSleepSeconds .Values.server.shutdownGraceSeconds }}
{{- $period := .Values.server.terminationGracePeriodSeconds | default (add $drain 30) }}
{{- if le (int $period) (int $drain) }}
{{- fail (printf "server.terminationGracePeriodSeconds (%v) must exceed server.preStopSleepSeconds + server.shutdownGraceSeconds (%v), or Kubernetes kills the server before in-flight requests drain" $period $drain) }}
{{- end }}
{{- $period }}
{{- end }}

{{- /*
Cross-field rules the schema cannot express; deployment.yaml includes this in every mode.
*/ -}}
{{- define "llmserve.validate" -}}
{{- if and .Values.tls.enabled (eq .Values.probes.type "grpc") }}
{{- fail "tls.enabled with probes.type=grpc: Kubernetes gRPC probes cannot use TLS; set probes.type=http (HTTPS probes on the HTTP port)" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName: a kubernetes.io/tls Secret with tls.crt and tls.key" }}
{{- end }}
{{- if and .Values.apiKey.enabled (not .Values.apiKey.existingSecret) (not .Values.apiKey.value) }}
{{- fail "apiKey.enabled needs apiKey.existingSecret (a Secret holding the key) or apiKey.value" }}
{{- end }}
{{- if or (hasKey (.Values.resources.limits | default dict) .Values.gpu.resourceName) (hasKey (.Values.resources.requests | default dict) .Values.gpu.resourceName) }}
{{- fail (printf "set the GPU count with gpu.count, not resources.*.%s: it is also the tensor-parallel size" .Values.gpu.resourceName) }}
{{- end }}
{{- if and .Values.tests.enabled .Values.tls.clientCA }}
{{- fail "tls.clientCA (mutual TLS) with tests.enabled: the helm test pod has no client certificate; set tests.enabled=false" }}
{{- end }}
{{- if and .Values.conversion.enabled (not .Values.model.pvc.existingClaim) }}
{{- fail "conversion.enabled needs model.pvc.existingClaim: the conversion runs as a pre-install hook, before the chart would create its own claim" }}
{{- end }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%v) exceeds autoscaling.maxReplicas (%v)" .Values.autoscaling.minReplicas .Values.autoscaling.maxReplicas) }}
{{- end }}
{{- if gt (int .Values.kserve.minReplicas) (int .Values.kserve.maxReplicas) }}
{{- fail (printf "kserve.minReplicas (%v) exceeds kserve.maxReplicas (%v)" .Values.kserve.minReplicas .Values.kserve.maxReplicas) }}
{{- end }}
{{- $http := ternary .Values.kserve.httpPort .Values.server.ports.http .Values.kserve.enabled }}
{{- if ne (len (uniq (list $http .Values.server.ports.grpc .Values.server.ports.metrics))) 3 }}
{{- fail (printf "the HTTP (%v), gRPC (%v) and metrics (%v) ports must differ" $http .Values.server.ports.grpc .Values.server.ports.metrics) }}
{{- end }}
{{- $_ := include "llmserve.claimName" . }}
{{- $_ := include "llmserve.terminationGracePeriodSeconds" . }}
{{- end }}

{{- /*
Server arguments. Context: dict "root" $ "modelDir" <path> "httpPort" <port>.
*/ -}}
{{- define "llmserve.args" -}}
{{- $v := .root.Values -}}
- serve
- --model
- {{ .modelDir | quote }}
- --served-model-name
- {{ $v.model.servedModelName | quote }}
- --host
- "0.0.0.0"
- --port
- {{ $v.server.ports.grpc | int | quote }}
- --http-port
- {{ .httpPort | int | quote }}
- --metrics-port
- {{ $v.server.ports.metrics | int | quote }}
- --tensor-parallel-size
- {{ max 1 (int $v.gpu.count) | quote }}
- --shutdown-grace-seconds
- {{ $v.server.shutdownGraceSeconds | int | quote }}
{{- with $v.engine.dtype }}
- --dtype
- {{ . | quote }}
{{- end }}
{{- with $v.engine.maxModelLen }}
- --max-model-len
- {{ . | int | quote }}
{{- end }}
{{- with $v.engine.gpuMemoryUtilization }}
- --gpu-memory-utilization
- {{ . | quote }}
{{- end }}
{{- with $v.server.maxQueuedRequests }}
- --max-queued-requests
- {{ . | int | quote }}
{{- end }}
{{- with $v.server.maxConcurrentRpcs }}
- --max-concurrent-rpcs
- {{ . | int | quote }}
{{- end }}
{{- if $v.tls.enabled }}
- --tls-cert
- /etc/llmserve/tls/tls.crt
- --tls-key
- /etc/llmserve/tls/tls.key
{{- if $v.tls.clientCA }}
- --tls-client-ca
- /etc/llmserve/tls/ca.crt
{{- end }}
{{- end }}
{{- if $v.apiKey.enabled }}
- --api-key-file
- {{ printf "/etc/llmserve/api-key/%s" $v.apiKey.secretKey | quote }}
{{- end }}
{{- range $v.engine.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{- define "llmserve.env" -}}
- name: HOME
  value: /home/llmserve
{{- range $name, $value := .Values.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "llmserve.volumeMounts" -}}
- name: shm
  mountPath: /dev/shm
- name: home
  mountPath: /home/llmserve
- name: tmp
  mountPath: /tmp
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/llmserve/tls
  readOnly: true
{{- end }}
{{- if .Values.apiKey.enabled }}
- name: api-key
  mountPath: /etc/llmserve/api-key
  readOnly: true
{{- end }}
{{- end }}

{{- define "llmserve.volumes" -}}
- name: shm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.shm.sizeLimit }}
- name: home
  emptyDir: {}
- name: tmp
  emptyDir: {}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ .Values.tls.secretName }}
{{- end }}
{{- if .Values.apiKey.enabled }}
- name: api-key
  secret:
    secretName: {{ include "llmserve.apiKeySecretName" . }}
    items:
      - key: {{ .Values.apiKey.secretKey }}
        path: {{ .Values.apiKey.secretKey }}
{{- end }}
{{- end }}

{{- /* Probe handler. Context: dict "root" $ "type" grpc|http "path" <HTTP path> "httpPort" <port>. */ -}}
{{- define "llmserve.probeHandler" -}}
{{- $v := .root.Values }}
{{- if eq .type "grpc" -}}
grpc:
  port: {{ $v.server.ports.grpc }}
  service: ""
{{- else -}}
httpGet:
  path: {{ .path }}
  port: {{ .httpPort }}
  scheme: {{ ternary "HTTPS" "HTTP" $v.tls.enabled }}
{{- end }}
{{- end }}

{{- /*
Probes from .Values.probes. Context: dict "root" $ "type" grpc|http "httpPort" <port>
"startup" <bool> (Knative rejects startup probes).
*/ -}}
{{- define "llmserve.probes" -}}
{{- $p := .root.Values.probes }}
{{- $ready := dict "root" .root "type" .type "path" "/v2/health/ready" "httpPort" .httpPort }}
{{- if .startup -}}
startupProbe:
  {{- include "llmserve.probeHandler" $ready | nindent 2 }}
  {{- toYaml $p.startup | nindent 2 }}
{{- end }}
readinessProbe:
  {{- include "llmserve.probeHandler" $ready | nindent 2 }}
  {{- toYaml $p.readiness | nindent 2 }}
livenessProbe:
  {{- include "llmserve.probeHandler" (merge (dict "path" "/v2/health/live") $ready) | nindent 2 }}
  {{- toYaml $p.liveness | nindent 2 }}
{{- end }}

{{- define "llmserve.resources" -}}
{{- $resources := deepCopy (.Values.resources | default dict) }}
{{- if gt (int .Values.gpu.count) 0 }}
{{- $gpu := dict .Values.gpu.resourceName (int .Values.gpu.count) }}
{{- $_ := set $resources "limits" (merge (get $resources "limits" | default dict) $gpu) }}
{{- $_ := set $resources "requests" (merge (get $resources "requests" | default dict) $gpu) }}
{{- end }}
{{- toYaml $resources }}
{{- end }}

{{- define "llmserve.prometheusAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.server.ports.metrics | quote }}
prometheus.io/path: /metrics
{{- end }}

{{- /* host:port the `helm test` pod calls. Context: dict "root" $ "protocol" grpc|http. */ -}}
{{- define "llmserve.testAddress" -}}
{{- $v := .root.Values }}
{{- $fullname := include "llmserve.fullname" .root }}
{{- if $v.kserve.enabled }}
{{- printf "%s-predictor.%s.svc:80" $fullname .root.Release.Namespace }}
{{- else }}
{{- $port := ternary $v.server.ports.grpc $v.server.ports.http (eq .protocol "grpc") }}
{{- printf "%s.%s.svc:%d" $fullname .root.Release.Namespace (int $port) }}
{{- end }}
{{- end }}
