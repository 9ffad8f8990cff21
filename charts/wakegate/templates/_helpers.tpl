{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "wakegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every resource name. A release whose name already contains the chart name
keeps it as is ("wakegate" gives wakegate-gateway, not wakegate-wakegate-gateway).
Truncated to 40 characters so the longest suffix (-gateway-bootstrap) still fits
the 63 characters of a DNS label.
*/}}
{{- define "wakegate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "wakegate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every resource.
*/}}
{{- define "wakegate.labels" -}}
helm.sh/chart: {{ include "wakegate.chart" . }}
app.kubernetes.io/name: {{ include "wakegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: wakegate
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels of one component; call with (dict "root" $ "component" "gateway").
*/}}
{{- define "wakegate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wakegate.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
All labels of one component; call like wakegate.selectorLabels.
*/}}
{{- define "wakegate.componentLabels" -}}
{{ include "wakegate.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Resource names. */}}
{{- define "wakegate.controlPlane.name" -}}
{{- printf "%s-control-plane" (include "wakegate.fullname" .) }}
{{- end }}

{{- define "wakegate.gateway.name" -}}
{{- printf "%s-gateway" (include "wakegate.fullname" .) }}
{{- end }}

{{- define "wakegate.gateway.internalName" -}}
{{- printf "%s-gateway-internal" (include "wakegate.fullname" .) }}
{{- end }}

{{- define "wakegate.gateway.bootstrapName" -}}
{{- printf "%s-gateway-bootstrap" (include "wakegate.fullname" .) }}
{{- end }}

{{- define "wakegate.controlPlane.serviceAccountName" -}}
{{- if .Values.controlPlane.serviceAccount.create }}
{{- default (include "wakegate.controlPlane.name" .) .Values.controlPlane.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.controlPlane.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "wakegate.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- default (include "wakegate.gateway.name" .) .Values.gateway.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.gateway.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
In-cluster DNS name of a Service of this release; call with (list $ "service-name").
*/}}
{{- define "wakegate.serviceHost" -}}
{{- $root := index . 0 }}
{{- printf "%s.%s.svc.%s" (index . 1) $root.Release.Namespace $root.Values.clusterDomain }}
{{- end }}

{{- define "wakegate.controlPlane.host" -}}
{{- include "wakegate.serviceHost" (list . (include "wakegate.controlPlane.name" .)) }}
{{- end }}

{{- define "wakegate.leaderElectionNamespace" -}}
{{- default .Release.Namespace .Values.controlPlane.leaderElection.namespace }}
{{- end }}

{{- define "wakegate.xdsServerName" -}}
{{- default (include "wakegate.controlPlane.host" .) .Values.xdsTLS.serverName }}
{{- end }}

{{/*
Listener ports of the gateway. The control plane puts them in the Listeners it serves
(wakegate.xds.translate.GatewayConfig), so they are fixed rather than values.
*/}}
{{- define "wakegate.gateway.httpPort" -}}8080{{- end }}
{{- define "wakegate.gateway.internalPort" -}}8081{{- end }}
{{- define "wakegate.gateway.httpsPort" -}}8443{{- end }}

{{/*
Where the gateway's bootstrap is mounted, and where both components mount their xDS TLS
Secret (ca.crt, tls.crt, tls.key).
*/}}
{{- define "wakegate.gateway.configDir" -}}/etc/envoy{{- end }}
{{- define "wakegate.xdsTLSDir" -}}/etc/wakegate/xds-tls{{- end }}

{{- define "wakegate.controlPlane.image" -}}
{{- printf "%s:%s" .Values.controlPlane.image.repository (default .Chart.AppVersion .Values.controlPlane.image.tag) }}
{{- end }}

{{- define "wakegate.gateway.image" -}}
{{- printf "%s:%s" .Values.gateway.image.repository .Values.gateway.image.tag }}
{{- end }}

{{/*
Preferred pod anti-affinity over nodes for one component; same call as selectorLabels.
*/}}
{{- define "wakegate.spreadAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "wakegate.selectorLabels" . | nindent 12 }}
{{- end }}

{{/* Security context of every container: non-root, read-only, no capabilities. */}}
{{- define "wakegate.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}
